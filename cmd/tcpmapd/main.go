// Command tcpmapd is the tcpmap node proxy: it serves Emissary TCPMappings.
//
//	tcpmapd --config /etc/tcpmap            serve
//	tcpmapd check --config /etc/tcpmap      validate, print the listener table
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpmap/tcpmap/datapath"
	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/daemon"
	"github.com/tcpmap/tcpmap/userspace/logging"
	"github.com/tcpmap/tcpmap/userspace/metrics"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

const usage = `tcpmapd: layer-4 TCP node proxy for Emissary TCPMappings

Usage:
  tcpmapd [flags]            serve the configuration
  tcpmapd check [flags]      validate the configuration, print the listener
                             table and every problem; exit 1 on errors

Flags:
`

// errUsage marks errors that deserve exit code 2.
var errUsage = errors.New("usage")

func main() {
	code, err := run(os.Args[1:])
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tcpmapd:", err)
	}
	os.Exit(code)
}

func run(args []string) (int, error) {
	check := len(args) > 0 && args[0] == "check"
	if check {
		args = args[1:]
	}

	fs := pflag.NewFlagSet("tcpmapd", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	var opts daemon.Options
	var logLevel, logFormat string
	fs.StringArrayVar(&opts.ConfigPaths, "config", nil, "configuration file or directory of YAML/JSON resources (repeatable)")
	fs.StringVar(&opts.AmbassadorID, "ambassador-id", "default", "serve only resources whose ambassador_id includes this id")
	fs.StringVar(&opts.AmbassadorNamespace, "ambassador-namespace", "default", "namespace a bare `service: name` resolves in (Emissary's AMBASSADOR_NAMESPACE)")
	fs.StringVar(&opts.ClusterDomain, "cluster-domain", "", "when set (e.g. cluster.local), expand `name` and `name.namespace` services to `name.namespace.svc.DOMAIN`")
	fs.StringVar(&opts.Datapath, "datapath", daemon.DatapathAuto, "auto, ebpf or userspace")
	fs.DurationVar(&opts.HandshakeTimeout, "handshake-timeout", 10*time.Second, "TLS handshake deadline, client and upstream side")
	fs.DurationVar(&opts.ProxyHeaderTimeout, "proxy-header-timeout", relay.DefaultProxyHeaderTimeout, "deadline for the PROXY protocol header on listeners that require one")
	fs.DurationVar(&opts.ConnectTimeout, "connect-timeout", snapshot.DefaultConnectTimeout, "upstream connect deadline (annotation tcpmap.io/connect-timeout-ms overrides per mapping)")
	fs.DurationVar(&opts.DrainTimeout, "drain-timeout", 30*time.Second, "how long live connections may finish after SIGTERM or removal of their listener")
	fs.DurationVar(&opts.DNSTTL, "dns-ttl", 30*time.Second, "how long resolved upstream addresses are cached")
	fs.StringVar(&opts.BPFFS, "bpffs", datapath.DefaultPinDir, "directory on a bpffs where the eBPF objects are pinned (inspect with bpftool)")
	fs.Var(&sizeFlag{&opts.SpliceBound}, "splice-bound", "most kernel memory one spliced connection may hold under a slow reader (e.g. 4MiB; default 4MiB)")
	fs.StringVar(&opts.AdminSocket, "admin-socket", api.DefaultSocket, "admin API unix socket for tcpmapctl (mode 0600); empty disables it")
	fs.StringVar(&opts.StateDir, "state-dir", daemon.DefaultStateDir, "directory where objects applied with tcpmapctl persist across restarts; empty disables applying")
	fs.BoolVar(&opts.WatchConfig, "watch", true, "reload when a configuration file changes (as SIGHUP does)")
	fs.StringVar(&opts.MetricsAddr, "metrics-addr", metrics.DefaultAddr, "Prometheus /metrics, /healthz and /readyz; empty disables")
	fs.StringVar(&opts.DemoUpstream, "demo-upstream", "", "start the built-in demo echo upstream on this address (for `make run`)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "json", "json or console")
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	if fs.NArg() > 0 {
		return 2, fmt.Errorf("unexpected argument %q (see --help): %w", fs.Arg(0), errUsage)
	}
	if len(opts.ConfigPaths) == 0 {
		return 2, fmt.Errorf("--config is required: %w", errUsage)
	}

	if check {
		if daemon.Check(os.Stdout, opts) > 0 {
			return 1, nil
		}
		return 0, nil
	}

	log, err := logging.New(logLevel, logFormat)
	if err != nil {
		return 2, err
	}
	defer func() { _ = log.Sync() }()
	opts.Logger = log

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, opts); err != nil {
		return 1, err
	}
	return 0, nil
}

// sizeFlag parses a byte size: 4194304, 4MiB, 512KiB.
type sizeFlag struct{ v *int }

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
			if err != nil || n <= 0 {
				return fmt.Errorf("%q: want a positive size such as 4MiB", s)
			}
			*f.v = n * u.mult
			return nil
		}
	}
	return fmt.Errorf("%q: want a positive size such as 4MiB", s)
}
