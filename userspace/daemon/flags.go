package daemon

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpmap/tcpmap/datapath"
	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/metrics"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// AddFlags registers one flag per option on fs, with the daemon's
// defaults. tcpmapd's main uses it, and so do the tests that check the
// deployment manifests against what the daemon really accepts.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringArrayVar(&o.ConfigPaths, "config", nil, "configuration file or directory of YAML/JSON resources (repeatable)")
	fs.StringVar(&o.AmbassadorID, "ambassador-id", "default", "serve only resources whose ambassador_id includes this id")
	fs.StringVar(&o.AmbassadorNamespace, "ambassador-namespace", "default", "namespace a bare `service: name` resolves in (Emissary's AMBASSADOR_NAMESPACE)")
	fs.StringVar(&o.ClusterDomain, "cluster-domain", "", "when set (e.g. cluster.local), expand `name` and `name.namespace` services to `name.namespace.svc.DOMAIN`")
	fs.StringVar(&o.Datapath, "datapath", DatapathAuto, "auto, ebpf or userspace")
	fs.DurationVar(&o.HandshakeTimeout, "handshake-timeout", 10*time.Second, "TLS handshake deadline, client and upstream side")
	fs.DurationVar(&o.ProxyHeaderTimeout, "proxy-header-timeout", relay.DefaultProxyHeaderTimeout, "deadline for the PROXY protocol header on listeners that require one")
	fs.DurationVar(&o.ConnectTimeout, "connect-timeout", snapshot.DefaultConnectTimeout, "upstream connect deadline (annotation tcpmap.io/connect-timeout-ms overrides per mapping)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 30*time.Second, "how long live connections may finish after SIGTERM or removal of their listener")
	fs.DurationVar(&o.DNSTTL, "dns-ttl", 30*time.Second, "how long resolved upstream addresses are cached")
	fs.StringVar(&o.SKLookup, "sk-lookup", SKLookupAuto, "with the eBPF datapath, serve every listener from one socket per address family through sk_lookup: auto, on or off (one socket per listener)")
	fs.StringVar(&o.BPFFS, "bpffs", datapath.DefaultPinDir, "directory on a bpffs where the eBPF objects are pinned (inspect with bpftool)")
	o.SpliceAfterBytes = DefaultSpliceAfterBytes
	fs.Var(&sizeFlag{v: &o.SpliceAfterBytes, zero: true}, "splice-after-bytes", "with the eBPF datapath, relay each cleartext connection in userspace until it has moved this many bytes (or lived --splice-after-time), then hand it to the kernel, so short connections skip the hand-off; 0 with --splice-after-time 0 hands over at once")
	fs.DurationVar(&o.SpliceAfterTime, "splice-after-time", DefaultSpliceAfterTime, "with the eBPF datapath, hand a cleartext connection to the kernel once it has lived this long, even if it moved few bytes (an idle connection then holds no goroutines); 0: no time trigger")
	fs.Var(&sizeFlag{v: &o.SpliceBound}, "splice-bound", "most kernel memory one spliced connection may hold under a slow reader (e.g. 4MiB; default 4MiB)")
	fs.StringVar(&o.AdminSocket, "admin-socket", api.DefaultSocket, "admin API unix socket for tcpmapctl (mode 0600); empty disables it")
	fs.StringVar(&o.StateDir, "state-dir", DefaultStateDir, "directory where objects applied with tcpmapctl persist across restarts; empty disables applying")
	fs.BoolVar(&o.WatchConfig, "watch", true, "reload when a configuration file changes (as SIGHUP does)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", metrics.DefaultAddr, "Prometheus /metrics, /healthz and /readyz; empty disables")
	fs.StringVar(&o.DemoUpstream, "demo-upstream", "", "start the built-in demo echo upstream on this address (for `make run`)")
	fs.BoolVar(&o.Kubernetes, "kubernetes", false, "watch the getambassador.io resources and their TLS Secrets in the Kubernetes API (in-cluster config unless --kubeconfig)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file for --kubernetes outside a cluster")
	fs.StringVar(&o.WatchNamespace, "watch-namespace", "", "with --kubernetes, watch only this namespace (default: all)")
	fs.StringVar(&o.NodeAddresses, "node-addresses", "", "open only listeners whose address is empty or one of these: \"auto\" (this host's interface addresses; the default with --kubernetes), a comma-separated list, or \"any\"")
}

// The deferred hand-off is off by default: every cleartext connection is
// handed to the kernel right after the dial. Deferring (64KiB and 1s are
// good values: a request and its answer end in userspace, where they cost
// less than the hand-off, make bench: connections/s) is opt-in until a
// duplication it showed once is understood: 496 bytes repeated in one of
// about 40 end-to-end 1 GiB transfers both ways (datapath/README.md).
const (
	DefaultSpliceAfterBytes = 0
	DefaultSpliceAfterTime  = 0
)

// Validate reports flag combinations the daemon cannot serve.
func (o *Options) Validate() error {
	if len(o.ConfigPaths) == 0 && !o.Kubernetes {
		return errors.New("--config is required (or --kubernetes)")
	}
	if o.Kubeconfig != "" && !o.Kubernetes {
		return errors.New("--kubeconfig needs --kubernetes")
	}
	if o.WatchNamespace != "" && !o.Kubernetes {
		return errors.New("--watch-namespace needs --kubernetes")
	}
	switch o.SKLookup {
	case SKLookupAuto, SKLookupOn, SKLookupOff, "":
	default:
		return fmt.Errorf("--sk-lookup %q: want auto, on or off", o.SKLookup)
	}
	if _, err := parseNodeAddresses(o.NodeAddresses); err != nil {
		return fmt.Errorf("--node-addresses: %w", err)
	}
	return nil
}

// sizeFlag parses a byte size: 4194304, 4MiB, 512KiB; 0 too when zero.
type sizeFlag struct {
	v    *int
	zero bool
}

func (f *sizeFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return strconv.Itoa(*f.v)
}

func (f *sizeFlag) Type() string { return "size" }

func (f *sizeFlag) Set(s string) error {
	units := []struct {
		suffix string
		mult   int
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.Atoi(strings.TrimSpace(num))
			if err != nil || n < 0 || n == 0 && !f.zero {
				return fmt.Errorf("%q: want a positive size such as 4MiB", s)
			}
			*f.v = n * u.mult
			return nil
		}
	}
	return fmt.Errorf("%q: want a positive size such as 4MiB", s)
}
