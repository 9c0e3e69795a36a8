// Package daemon is tcpmapd's main loop: it picks the datapath, starts the
// manager, and turns signals into reloads and a graceful stop.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/datapath"
	"github.com/tcpmap/tcpmap/datapath/splice"
	"github.com/tcpmap/tcpmap/datapath/steer"
	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/demo"
	"github.com/tcpmap/tcpmap/userspace/manager"
	"github.com/tcpmap/tcpmap/userspace/metrics"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/resolve"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/store"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig"
	"github.com/tcpmap/tcpmap/userspace/upstream"
	"github.com/tcpmap/tcpmap/userspace/watch"
)

// Datapath modes accepted by --datapath.
const (
	DatapathAuto      = "auto"
	DatapathEBPF      = "ebpf"
	DatapathUserspace = "userspace"
)

// Options are tcpmapd's settings, one per flag.
type Options struct {
	Logger              *zap.Logger
	ConfigPaths         []string
	AmbassadorID        string
	AmbassadorNamespace string
	ClusterDomain       string
	Datapath            string
	HandshakeTimeout    time.Duration
	ProxyHeaderTimeout  time.Duration
	ConnectTimeout      time.Duration
	DrainTimeout        time.Duration
	DNSTTL              time.Duration
	// BPFFS is the directory the BPF objects are pinned in.
	BPFFS string
	// SpliceBound is the most kernel memory one spliced pair may hold
	// under a slow reader, in bytes; zero means the engine's default.
	SpliceBound int
	// AdminSocket is the admin API's unix socket; empty disables it.
	AdminSocket string
	// StateDir keeps the objects applied through the admin API across
	// restarts; empty disables applying through the API.
	StateDir string
	// WatchConfig reloads when a configuration file changes (fsnotify,
	// debounced), as SIGHUP does.
	WatchConfig bool
	// MetricsAddr serves /metrics, /healthz and /readyz over HTTP; empty
	// disables it.
	MetricsAddr string
	// DemoUpstream, when set, starts the built-in echo upstream on this
	// address and probes every cleartext listener once through tcpmapd.
	DemoUpstream string
	// Kubernetes watches the getambassador.io resources and the TLS
	// Secrets they name in the Kubernetes API, as one more source.
	Kubernetes bool
	// Kubeconfig is the kubeconfig file; empty means in-cluster config.
	Kubeconfig string
	// WatchNamespace limits the Kubernetes source to one namespace; empty
	// watches all.
	WatchNamespace string
	// SpliceAfterBytes and SpliceAfterTime: a cleartext connection moves
	// that many bytes, or lives that long, in userspace before the kernel
	// takes it; both 0 hands it over at once.
	SpliceAfterBytes int
	SpliceAfterTime  time.Duration
	// SKLookup is "auto", "on" or "off": serve every listener from one
	// socket per family through the sk_lookup program.
	SKLookup string
	// NodeAddresses limits the listeners opened to those whose address is
	// empty or one of these: "auto" for this host's interface addresses,
	// a comma-separated list, or "any"; empty means "auto" with Kubernetes
	// and "any" without.
	NodeAddresses string
}

// Values of --sk-lookup.
const (
	SKLookupAuto = "auto"
	SKLookupOn   = "on"
	SKLookupOff  = "off"
)

// ResolveOptions are the resolution settings derived from the flags.
func (o Options) ResolveOptions() resolve.Options {
	return resolve.Options{
		AmbassadorID:          o.AmbassadorID,
		AmbassadorNamespace:   o.AmbassadorNamespace,
		ClusterDomain:         o.ClusterDomain,
		DefaultConnectTimeout: o.ConnectTimeout,
	}
}

// Datapath labels, as logs and the admin API report them.
const (
	LabelKernel    = "kernel+userspace"
	LabelUserspace = "userspace"
)

// openDatapath starts the kernel datapath as mode asks. It returns the
// datapath's label, why it was chosen, and the kernel splice (nil when
// everything is relayed in userspace). In auto mode a kernel that cannot
// load the BPF objects is not an error: the reason is returned instead.
func openDatapath(opts Options, log *zap.Logger) (label, why string, k *kernel, err error) {
	switch opts.Datapath {
	case DatapathUserspace:
		return LabelUserspace, "requested with --datapath userspace", nil, nil
	case DatapathAuto, DatapathEBPF, "":
	default:
		return "", "", nil, fmt.Errorf("--datapath %q: want auto, ebpf or userspace", opts.Datapath)
	}
	e, err := splice.Open(splice.Options{
		Datapath: datapath.Options{PinDir: opts.BPFFS, Log: log.Named("datapath"), NoSteering: opts.SKLookup == SKLookupOff},
		Bound:    opts.SpliceBound,
		Log:      log.Named("splice"),
	})
	if err != nil {
		if opts.Datapath == DatapathEBPF {
			return "", "", nil, fmt.Errorf("--datapath ebpf: %w", err)
		}
		return LabelUserspace, fmt.Sprintf("falling back to userspace for every mapping: %v", err), nil, nil
	}
	k = &kernel{e: e}
	steering := "listeners served by one socket per address family through sk_lookup"
	if ok, serr := e.Datapath().Steering(); !ok {
		k.steerWhy = serr.Error()
	} else if k.steer, err = steer.New(e.Datapath(), log.Named("steer")); err != nil {
		k.steerWhy = err.Error()
	}
	if k.steer == nil {
		if opts.SKLookup == SKLookupOn {
			e.Close()
			return "", "", nil, fmt.Errorf("--sk-lookup on: %s", k.steerWhy)
		}
		steering = "one socket per listener (sk_lookup: " + k.steerWhy + ")"
	}
	st := e.Stats()
	why = fmt.Sprintf("cleartext passthrough spliced by eBPF sockmap (pinned at %s, attached by %s); TLS relayed in userspace; %s",
		st.PinDir, st.Attach, steering)
	return LabelKernel, why, k, nil
}

// Run serves until ctx is cancelled (SIGTERM/SIGINT in main), then drains
// for the drain timeout. SIGHUP reloads the configuration.
func Run(ctx context.Context, opts Options) error {
	log := opts.Logger
	dp, why, k, err := openDatapath(opts, log)
	if err != nil {
		return err
	}
	log.Info("datapath", zap.String("mode", dp), zap.String("reason", why))
	var splicer relay.Splicer
	var view kernelView
	if k != nil {
		splicer, view = k, k
		defer func() {
			if k.steer != nil {
				k.steer.Close()
			}
			if err := k.e.Close(); err != nil {
				log.Error("closing the eBPF datapath", zap.Error(err))
			} else {
				log.Info("eBPF datapath detached and unpinned")
			}
		}()
	}

	if opts.DemoUpstream != "" {
		up, err := demo.StartUpstream(opts.DemoUpstream, log.Named("demo"))
		if err != nil {
			return err
		}
		defer up.Close()
	}

	nodeAddress, err := nodeAddressFilter(opts)
	if err != nil {
		return fmt.Errorf("--node-addresses: %w", err)
	}
	dialer := upstream.NewDialer(upstream.Options{TTL: opts.DNSTTL, Logger: log.Named("upstream")})
	// The admin API and the metrics read the same status; the manager is
	// set right below.
	adm := &admin{datapath: dp, reason: why, kernel: view}
	mh := metrics.New(adm, metrics.Options{Logger: log.Named("metrics")})
	dials := mh.DialObserver()

	// Reloads from file changes, Kubernetes changes and SIGHUP are
	// serialised through the loop below.
	changed := make(chan struct{}, 1)
	reloadDue := func() {
		select {
		case changed <- struct{}{}:
		default: // a reload is already due
		}
	}
	var sources []manager.Source
	kubeSrc, err := startKubernetes(ctx, opts, log, reloadDue)
	if err != nil {
		return err
	}
	if kubeSrc != nil {
		defer kubeSrc.Close()
		sources = append(sources, kubeSrc)
	}
	mopts := manager.Options{
		Logger:      log,
		ConfigPaths: opts.ConfigPaths,
		Store:       stateStore(opts.StateDir),
		Resolve:     opts.ResolveOptions(),
		Relay: relay.Options{
			Logger:             log.Named("relay"),
			Dialer:             dialer,
			HandshakeTimeout:   opts.HandshakeTimeout,
			ProxyHeaderTimeout: opts.ProxyHeaderTimeout,
			ServerTLS:          tlsconfig.ServerConfig,
			ClientTLS:          tlsconfig.ClientConfig,
			Splicer:            splicer,
			SpliceAfterBytes:   int64(opts.SpliceAfterBytes),
			SpliceAfterTime:    opts.SpliceAfterTime,
			ObserveDial: func(mapping config.Ref, took time.Duration, err error) {
				dials.ObserveDial(mapping.NamespacedName(), took, err)
			},
		},
		DrainTimeout: opts.DrainTimeout,
		NodeAddress:  nodeAddress,
		Sources:      sources,
	}
	if k != nil {
		mopts.Listen, mopts.Tables = k.listen, k
	}
	m := manager.New(mopts)

	adm.m = m
	if opts.MetricsAddr != "" {
		stop, err := serveMetrics(opts.MetricsAddr, mh, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	// The Kubernetes source learns which Secrets the files name before its
	// first sync, so that it waits for those too.
	m.TellReferrers()
	waitKubernetes(ctx, kubeSrc, opts, log)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	// The watch starts before the first load, so a file written between
	// that load and "ready" is not missed. With --kubernetes alone there
	// is no file to watch.
	if opts.WatchConfig && len(opts.ConfigPaths) > 0 {
		w, err := watch.New(opts.ConfigPaths, watch.Options{Logger: log.Named("watch")})
		if err != nil {
			return fmt.Errorf("watch configuration: %w", err)
		}
		defer w.Close()
		wctx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go w.Run(wctx, reloadDue)
	}

	// Every reload is followed by the Events of its outcomes.
	reload := func() manager.Result {
		res := m.Reload()
		publishOutcomes(kubeSrc, m)
		return res
	}
	res := reload()
	if opts.AdminSocket != "" {
		// Traffic matters more than inspection: without its admin socket
		// the daemon still serves, and says so loudly.
		srv := api.NewServer(adm, log.Named("api"), api.WithObjects(m))
		if err := srv.Listen(opts.AdminSocket); err != nil {
			log.Error("admin API unavailable; serving without it", zap.Error(err))
		} else {
			go func() {
				if err := srv.Serve(); err != nil {
					log.Error("admin API stopped", zap.Error(err))
				}
			}()
			defer srv.Close()
			log.Info("admin API listening", zap.String("socket", opts.AdminSocket))
		}
	}
	mh.SetReady(true)
	log.Info("ready", zap.Int("listeners", res.Listeners), zap.Int("errors", res.Errors), zap.Int("warnings", res.Warnings))
	if opts.DemoUpstream != "" {
		go probeDemo(ctx, log.Named("demo"), m.Snapshot())
	}

	// Listeners that could not be bound (a port another process held)
	// are retried with backoff, so a port freed later is served without
	// a reload.
	const minRetry, maxRetry = time.Second, 30 * time.Second
	retryEvery := minRetry
	retry := time.NewTimer(retryEvery)
	defer retry.Stop()
	reloadNow := func(msg string) {
		res := reload()
		retryEvery = minRetry
		retry.Reset(retryEvery)
		log.Info(msg, zap.Int("listeners", res.Listeners), zap.Int("errors", res.Errors), zap.Int("warnings", res.Warnings))
	}

	for {
		select {
		case <-retry.C:
			if m.RetryFailed() > 0 {
				retryEvery = min(2*retryEvery, maxRetry)
			} else {
				retryEvery = minRetry
			}
			retry.Reset(retryEvery)
			publishOutcomes(kubeSrc, m)
		case <-hup:
			reloadNow("reloaded on SIGHUP")
		case <-changed:
			reloadNow("reloaded: configuration changed")
		case <-ctx.Done():
			log.Info("stopping: no new connections; draining live ones", zap.Duration("drain_timeout", opts.DrainTimeout))
			sctx, cancel := context.WithTimeout(context.Background(), opts.DrainTimeout+time.Second)
			defer cancel()
			if err := m.Shutdown(sctx); err != nil {
				log.Warn("drain ended with connections still open", zap.Error(err))
			}
			log.Info("stopped")
			return nil
		}
	}
}

// DefaultStateDir is where objects applied through the admin API persist.
const DefaultStateDir = "/var/lib/tcpmap"

// stateStore keeps applied objects in dir/objects, leaving dir for other
// state; nil when dir is empty.
func stateStore(dir string) *store.Store {
	if dir == "" {
		return nil
	}
	return store.New(filepath.Join(dir, "objects"))
}

// probeDemo sends one line through each listener of the demo configuration
// and logs what came back, so `make run` shows bytes flowing.
func probeDemo(ctx context.Context, log *zap.Logger, snap snapshot.Snapshot) {
	for _, l := range snap.Listeners {
		host := l.Address
		if host == "" {
			host = "127.0.0.1"
		}
		addr := net.JoinHostPort(host, strconv.Itoa(l.Port))
		for _, r := range l.Routes {
			sni := ""
			if l.Protocol == snapshot.ProtocolTLS {
				sni = r.Host
				if sni == "" || sni[0] == '*' {
					continue
				}
			}
			got, err := demo.Probe(ctx, addr, sni)
			if err != nil {
				log.Warn("demo probe failed", zap.String("listener", addr), zap.String("sni", sni), zap.Error(err))
				continue
			}
			log.Info("demo probe: bytes flowed through tcpmapd", zap.String("listener", addr), zap.String("sni", sni),
				zap.String("reply", got))
		}
	}
}

// Check loads and resolves the configuration, prints the listener table and
// every problem to w, and returns the number of error problems.
func Check(w io.Writer, opts Options) int {
	snap, problems := manager.Load(opts.ConfigPaths, opts.ResolveOptions())
	if err := snapshot.WriteTable(w, snap); err != nil {
		fmt.Fprintln(w, "write table:", err)
	}
	errs := 0
	if len(problems) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Problems:")
	}
	for _, p := range problems {
		level := "error"
		if p.IsWarning() {
			level = "warning"
		} else {
			errs++
		}
		fmt.Fprintf(w, "  %s: %s\n", level, problemText(p))
	}
	fmt.Fprintf(w, "\n%d listener(s), %d error(s), %d warning(s)\n", len(snap.Listeners), errs, len(problems)-errs)
	return errs
}

func problemText(p config.Problem) string {
	s := p.Error()
	if p.Origin.File == "" && p.Origin.Source != "" && p.Ref.Kind != "" {
		s += " (" + p.Origin.Source + ")"
	}
	return s
}

// serveMetrics serves h on addr until the returned stop is called. A port
// that cannot be bound is an error: an operator who asked for metrics
// must not silently get none.
func serveMetrics(addr string, h http.Handler, log *zap.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", zap.Error(err))
		}
	}()
	log.Info("metrics listening", zap.String("addr", ln.Addr().String()))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
