package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// proxyKind is one column of the bench: how to start it in front of the
// bench's upstream.
type proxyKind struct {
	key   string // name in --only
	title string // row label
	start func(ctx context.Context, e *env) (*instance, error)
}

// proxyKinds lists every proxy in table order.
var proxyKinds = []proxyKind{
	{key: "direct", title: "direct (no proxy)", start: startDirect},
	{key: "userspace", title: "tcpmapd --datapath userspace", start: tcpmapdStarter("userspace", "userspace")},
	{key: "ebpf", title: "tcpmapd --datapath ebpf", start: tcpmapdStarter("ebpf", "ebpf")},
	// The same with the deferred hand-off (opt-in): a connection goes to
	// the kernel after 64 KiB or 1 s, so the table shows what deferring
	// saves and what it costs.
	{key: "ebpf-deferred", title: "tcpmapd --datapath ebpf, hand-off after 64KiB/1s", start: tcpmapdStarter("ebpf-deferred", "ebpf", "--splice-after-bytes", "64KiB", "--splice-after-time", "1s")},
	{key: "haproxy", title: "HAProxy (tcp, nbthread 2)", start: startHAProxy},
	{key: "gorelay", title: "Go io.Copy relay (reference)", start: startGoRelay},
}

// env is what every proxy start needs: the upstream, a private temp dir and
// the binaries.
type env struct {
	up      *upstream
	tmp     string
	opts    *options
	stderr  io.Writer
	nofile  uint64 // RLIMIT_NOFILE the proxies inherit
	buildMu sync.Mutex
	tcpmapd string // built or given binary; empty until built
}

// instance is a running proxy: a listen address per service and, unless
// direct, the process whose CPU and memory are measured.
type instance struct {
	addrs map[service]string
	proc  *child // nil for direct
	stop  func()
}

func (in *instance) pid() int {
	if in.proc == nil {
		return 0
	}
	return in.proc.pid()
}

func startDirect(_ context.Context, e *env) (*instance, error) {
	return &instance{addrs: e.up.addrs, stop: func() {}}, nil
}

// freePorts reserves n distinct free loopback ports by binding them all at
// once, then releases them for the proxy to bind. Another process could
// take one in between; the proxy would then fail to start and say so.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("reserve a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// proxyPorts assigns a free listen port to each service.
func proxyPorts() (map[service]int, error) {
	ports, err := freePorts(len(services))
	if err != nil {
		return nil, err
	}
	m := map[service]int{}
	for i, s := range services {
		m[s] = ports[i]
	}
	return m, nil
}

func listenAddrs(ports map[service]int) map[service]string {
	m := map[service]string{}
	for s, p := range ports {
		m[s] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return m
}

// tcpmapdBinary returns the tcpmapd to run: --tcpmapd, or ./cmd/tcpmapd
// built once into the temp dir.
func (e *env) tcpmapdBinary(ctx context.Context) (string, error) {
	e.buildMu.Lock()
	defer e.buildMu.Unlock()
	if e.tcpmapd != "" {
		return e.tcpmapd, nil
	}
	if e.opts.tcpmapd != "" {
		e.tcpmapd = e.opts.tcpmapd
		return e.tcpmapd, nil
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(e.tmp, "tcpmapd")
	fmt.Fprintln(e.stderr, "bench: building ./cmd/tcpmapd")
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", bin, "./cmd/tcpmapd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build tcpmapd: %w\n%s", err, out)
	}
	e.tcpmapd = bin
	return bin, nil
}

func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// moduleRoot is the directory of the go.mod that holds the working directory.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside the tcpmap module; run from the repository or pass --tcpmapd")
	}
	return filepath.Dir(gomod), nil
}

// tcpmapdConfig is one hostless (cleartext passthrough) TCPMapping per
// service. Circuit breakers are raised past the idle test's connection count
// (Envoy's default is 1024) and no idle timeout is set, so the datapath is
// the plain one.
func tcpmapdConfig(ports map[service]int, up map[service]string) string {
	var b strings.Builder
	for _, s := range services {
		fmt.Fprintf(&b, `---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: bench-%s
  namespace: default
spec:
  address: 127.0.0.1
  port: %d
  service: %s
  circuit_breakers:
  - priority: default
    max_connections: 1000000
    max_pending_requests: 1000000
`, s, ports[s], up[s])
	}
	return b.String()
}

// tcpmapdStarter starts tcpmapd with one datapath and extra flags; name
// keeps its files and pins apart from the other variants'. A daemon that
// exits or never serves makes the column unavailable with the reason from
// its log.
func tcpmapdStarter(name, datapath string, extra ...string) func(context.Context, *env) (*instance, error) {
	return func(ctx context.Context, e *env) (*instance, error) {
		bin, err := e.tcpmapdBinary(ctx)
		if err != nil {
			return nil, err
		}
		ports, err := proxyPorts()
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(e.tmp, "tcpmapd-"+name)
		if err := os.MkdirAll(filepath.Join(dir, "config"), 0o755); err != nil {
			return nil, err
		}
		cfg := filepath.Join(dir, "config", "bench.yaml")
		if err := os.WriteFile(cfg, []byte(tcpmapdConfig(ports, e.up.addrs)), 0o644); err != nil {
			return nil, err
		}
		// No admin socket or metrics port, and a pin directory of its own:
		// the bench must not collide with a tcpmapd already running here.
		args := []string{"--config", cfg, "--datapath", datapath, "--drain-timeout", "1s", "--log-level", "info",
			"--admin-socket", "", "--metrics-addr", "", "--state-dir", "",
			"--bpffs", fmt.Sprintf("/sys/fs/bpf/tcpmap-bench-%d-%s", os.Getpid(), name)}
		args = append(append(args, extra...), e.opts.tcpmapdArgs...)
		c, err := startChild("tcpmapd "+datapath, filepath.Join(dir, "tcpmapd.log"), nil, bin, args...)
		if err != nil {
			return nil, err
		}
		in := &instance{addrs: listenAddrs(ports), proc: c, stop: func() { c.stop(5 * time.Second) }}
		if err := waitReady(ctx, in, 15*time.Second); err != nil {
			in.stop()
			return nil, err
		}
		return in, nil
	}
}

// haproxyConfig is a tcp-mode HAProxy with two threads, one `listen`
// section per service, and maxconn above the idle test's connection count.
func haproxyConfig(ports map[service]int, up map[service]string, maxconn int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
  nbthread 2
  maxconn %d

defaults
  mode tcp
  maxconn %d
  timeout connect 5s
  timeout client 10m
  timeout server 10m
`, maxconn, maxconn)
	for _, s := range services {
		fmt.Fprintf(&b, "\nlisten bench-%s\n  bind 127.0.0.1:%d\n  server up %s\n", s, ports[s], up[s])
	}
	return b.String()
}

// haproxyPath finds haproxy on PATH or in /usr/sbin (not on every PATH).
func haproxyPath(flag string) (string, error) {
	if flag != "" {
		if _, err := os.Stat(flag); err != nil {
			return "", fmt.Errorf("haproxy %s not found (install it with `apt-get install haproxy`)", flag)
		}
		return flag, nil
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy", nil
	}
	return "", errors.New("haproxy not found (install it with `apt-get install haproxy`)")
}

// haproxyVersion is the first line of `haproxy -v`, or "".
func haproxyVersion(ctx context.Context, path string) string {
	out, err := exec.CommandContext(ctx, path, "-v").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

func startHAProxy(ctx context.Context, e *env) (*instance, error) {
	bin, err := haproxyPath(e.opts.haproxy)
	if err != nil {
		return nil, unavailable("%v", err)
	}
	ports, err := proxyPorts()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.tmp, "haproxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	// HAProxy refuses to start when 2 × maxconn (plus a few) descriptors
	// exceed RLIMIT_NOFILE and it cannot raise it.
	maxconn := 30000
	if e.nofile > 0 {
		maxconn = min(maxconn, int(e.nofile-64)/2)
	}
	if err := os.WriteFile(cfg, []byte(haproxyConfig(ports, e.up.addrs, maxconn)), 0o644); err != nil {
		return nil, err
	}
	// -db: foreground, no daemon, so the pid is the one doing the work.
	c, err := startChild("haproxy", filepath.Join(dir, "haproxy.log"), nil, bin, "-f", cfg, "-db")
	if err != nil {
		return nil, unavailable("%v", err)
	}
	in := &instance{addrs: listenAddrs(ports), proc: c, stop: func() { c.stop(5 * time.Second) }}
	if err := waitReady(ctx, in, 15*time.Second); err != nil {
		in.stop()
		return nil, err
	}
	return in, nil
}

func startGoRelay(ctx context.Context, e *env) (*instance, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("go relay: own executable: %w", err)
	}
	ports, err := proxyPorts()
	if err != nil {
		return nil, err
	}
	var args []string
	for _, s := range services {
		args = append(args, fmt.Sprintf("127.0.0.1:%d=%s", ports[s], e.up.addrs[s]))
	}
	c, err := startChild("go relay", filepath.Join(e.tmp, "gorelay.log"), []string{childEnv + "=" + childGoRelay}, exe, args...)
	if err != nil {
		return nil, err
	}
	in := &instance{addrs: listenAddrs(ports), proc: c, stop: func() { c.stop(5 * time.Second) }}
	if err := waitReady(ctx, in, 15*time.Second); err != nil {
		in.stop()
		return nil, err
	}
	return in, nil
}

// waitReady waits until every service address of a proxy accepts and one
// 64-byte echo comes back through it. A process that exits first, or does
// not serve in time, makes the proxy unavailable with its log's reason.
func waitReady(ctx context.Context, in *instance, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if in.proc != nil && in.proc.exited() {
			return unavailable("%s", in.proc.exitReason())
		}
		if last = probe(ctx, in.addrs); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.Canceled) {
				return ctx.Err()
			}
			reason := last.Error()
			if in.proc != nil {
				reason = fmt.Sprintf("not serving after %s: %v; log: %s", timeout, last, in.proc.exitReason())
			}
			return unavailable("%s", reason)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func probe(ctx context.Context, addrs map[service]string) error {
	d := net.Dialer{Timeout: time.Second}
	for _, s := range services {
		if s == svcIdle {
			// Not probed: the idle test counts the connections the upstream
			// holds, and a probe would be one of them.
			continue
		}
		c, err := d.DialContext(ctx, "tcp", addrs[s])
		if err != nil {
			return err
		}
		if s == svcEcho {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			msg := make([]byte, msgSize)
			copy(msg, "ready?")
			if _, err := c.Write(msg); err == nil {
				_, err = io.ReadFull(c, msg)
			}
			if err != nil {
				c.Close()
				return fmt.Errorf("echo through %s: %w", addrs[s], err)
			}
		}
		c.Close()
	}
	return nil
}
