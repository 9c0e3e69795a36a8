package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Traffic policy (issue 3): canary weights, idle timeout, circuit breakers,
// unknown SNI and listen addresses, through the real tcpmapd. The PROXY
// protocol tests are in policy_proxy_test.go.

// IPv6 addresses of the client ⇄ proxy link, added by addIPv6 for the tests
// that need them. nodad makes them usable at once instead of after
// duplicate address detection.
const (
	proxyIP6  = "fd00:231:1::1"
	clientIP6 = "fd00:231:1::2"
)

// addIPv6 puts proxyIP6 on the proxy's client-side link and clientIP6 on
// the client's. Call it before starting tcpmapd, which binds to proxyIP6.
func (tp *topology) addIPv6(t testing.TB) {
	t.Helper()
	run(t, "ip", "-n", tp.client.name, "addr", "add", clientIP6+"/64", "dev", "c0", "nodad")
	run(t, "ip", "-n", tp.proxy.name, "addr", "add", proxyIP6+"/64", "dev", "p0", "nodad")
}

// TestPolicyWeights: 1000 connections to an 80/20 pair, and 1000 to a
// 50/unset/unset group (50/25/25), each land within 5 points of the
// configured split. With n = 1000 one standard deviation is 1.3 to 1.6
// points, so 5 points is more than 3 deviations: a real skew such as
// Emissary's 70/30 → 77/23 running-total bug would show, noise would not.
func TestPolicyWeights(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	for _, s := range []struct {
		host string
		port int
	}{
		{"upstream", 7200}, {"cockroach", 7200},
		{"upstream-host-1", 7300}, {"upstream-host-2", 7300}, {"upstream-host", 7300},
	} {
		tp.serveEcho(t, s.host, s.port, false)
	}
	tp.start(t, daemonArgs([]string{configDir(t, []string{"policy/weights.yaml"}, nil)})...)

	const n = 1000
	for _, tc := range []struct {
		name string
		port int
		want map[string]float64 // upstream → percent
	}{
		{"80/20 pair", 7200, map[string]float64{"upstream": 80, "cockroach": 20}},
		{"50/unset/unset group", 7300, map[string]float64{"upstream-host-1": 50, "upstream-host-2": 25, "upstream-host": 25}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			counts, err := tp.countUpstreams(ctx, proxyAddr(tc.port), n, 16)
			if err != nil {
				t.Fatalf("port %d: %v (counts so far %v)", tc.port, err, counts)
			}
			t.Logf("port %d: %v", tc.port, counts)
			total := 0
			for name, k := range counts {
				total += k
				if _, ok := tc.want[name]; !ok {
					t.Errorf("%d connections reached %s, which is not in the group", k, name)
				}
			}
			if total != n {
				t.Errorf("counted %d connections, want %d", total, n)
			}
			for name, pct := range tc.want {
				got := 100 * float64(counts[name]) / n
				if got < pct-5 || got > pct+5 {
					t.Errorf("%s got %.1f%% of %d connections, want %.0f%% ± 5", name, got, n, pct)
				}
			}
		})
	}
}

// countUpstreams opens n short connections to addr from the client
// namespace, workers at a time, reads each upstream's greeting and counts
// the upstreams reached. Each worker stays in the client namespace for all
// its connections, so there is one setns per worker, not per connection.
func (tp *topology) countUpstreams(ctx context.Context, addr string, n, workers int) (map[string]int, error) {
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		wg     sync.WaitGroup
		errs   = make([]error, workers)
	)
	for w := range workers {
		share := n / workers
		if w < n%workers {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = tp.client.do(func() error {
				d := net.Dialer{Timeout: 5 * time.Second}
				for range share {
					if err := ctx.Err(); err != nil {
						return err
					}
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						return err
					}
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					line, err := readLine(c)
					c.Close()
					if err != nil {
						return fmt.Errorf("read greeting (got %q): %w", line, err)
					}
					g, err := parseGreeting(line)
					if err != nil {
						return err
					}
					mu.Lock()
					counts[g.Upstream]++
					mu.Unlock()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return counts, errors.Join(errs...)
}

// TestPolicyIdleTimeout: with idle_timeout_ms: 1000 an idle connection is
// closed, on both sides, about a second after its last byte, while a busy
// connection on the same mapping that sends a byte every 200 ms for 3 s
// keeps going. The window (0.8 s to 5 s) is a deadline, not a measurement.
func TestPolicyIdleTimeout(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	// The upstream reports each connection's end: an idle close must reach
	// the upstream side too.
	upstreamEnded := make(chan struct{}, 8)
	tp.serveFunc(t, "upstream", 7400, false, func(c net.Conn, _ *tls.ConnectionState) {
		if _, err := io.WriteString(c, formatGreeting("upstream", 7400, nil)); err == nil {
			_, _ = io.Copy(c, c)
		}
		upstreamEnded <- struct{}{}
	})
	tp.start(t, daemonArgs([]string{configDir(t, []string{"policy/idle.yaml"}, nil)})...)

	busy, err := tp.connect(ctx, proxyAddr(7400))
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, err := roundTrip(busy); err != nil {
		t.Fatalf("busy connection: %v", err)
	}
	busyErr := make(chan error, 1)
	go func() {
		// 15 one-byte echoes, 200 ms apart: never idle for the timeout.
		for i := range 15 {
			time.Sleep(200 * time.Millisecond)
			b := []byte{byte('a' + i)}
			if _, err := busy.Write(b); err != nil {
				busyErr <- fmt.Errorf("byte %d at %v: write: %w", i, time.Duration(i+1)*200*time.Millisecond, err)
				return
			}
			got := make([]byte, 1)
			if _, err := io.ReadFull(busy, got); err != nil || got[0] != b[0] {
				busyErr <- fmt.Errorf("byte %d at %v: echo %q, %v", i, time.Duration(i+1)*200*time.Millisecond, got, err)
				return
			}
		}
		busyErr <- echo(busy)
	}()

	idle, err := tp.connect(ctx, proxyAddr(7400))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := roundTrip(idle); err != nil {
		t.Fatalf("idle connection: %v", err)
	}
	elapsed, err := expectClosed(idle, 5*time.Second)
	switch {
	case err != nil:
		t.Errorf("idle connection with idle_timeout_ms 1000: %v", err)
	case elapsed < 800*time.Millisecond:
		t.Errorf("idle connection closed %v after its last byte, before idle_timeout_ms 1000", elapsed)
	default:
		t.Logf("idle connection closed %v after its last byte", elapsed)
		select {
		case <-upstreamEnded:
		case <-time.After(5 * time.Second):
			t.Error("the client side of the idle connection closed, the upstream side is still open after 5 s")
		}
	}

	select {
	case err := <-busyErr:
		if err != nil {
			t.Errorf("busy connection on the same mapping: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("busy connection: no result before the test deadline")
	}
}

// expectClosed waits up to within for the peer to close c, reading and
// discarding nothing: any byte received is an error, as is c still open
// at the end. It returns how long the close took.
func expectClosed(c net.Conn, within time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := c.SetReadDeadline(start.Add(within)); err != nil {
		return 0, err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	elapsed := time.Since(start)
	switch {
	case n > 0:
		return elapsed, fmt.Errorf("received %q, want the connection closed", buf[:n])
	case isClosedByPeer(err):
		return elapsed, nil
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return elapsed, fmt.Errorf("still open after %v", within)
	default:
		return elapsed, fmt.Errorf("read: %w, want end of stream or reset", err)
	}
}

// isClosedByPeer reports whether err is the end of stream or a reset.
func isClosedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPolicyCircuitBreaker: circuit_breakers [{max_connections: 3}] lets
// exactly 3 concurrent connections reach the upstream and closes the 4th
// at once, without dialing the upstream; once one closes, a new one gets
// through.
func TestPolicyCircuitBreaker(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	srv := tp.serveEcho(t, "upstream", 7500, false)
	d := tp.start(t, daemonArgs([]string{configDir(t, []string{"policy/breakers.yaml"}, nil)})...)
	checkBreaker(ctx, t, tp, srv, proxyAddr(7500), 3)
	checkTripLogged(t, d, "default/three-at-most")
}

// TestPolicyModuleCircuitBreaker: a mapping without circuit_breakers
// inherits the ambassador Module's (max_connections: 1); a mapping with its
// own (max_connections: 2) keeps it.
func TestPolicyModuleCircuitBreaker(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	inherits := tp.serveEcho(t, "upstream", 7600, false)
	own := tp.serveEcho(t, "cockroach", 7601, false)
	d := tp.start(t, daemonArgs([]string{configDir(t, []string{"policy/module-breakers.yaml"}, nil)})...)
	t.Run("inherited max_connections 1", func(t *testing.T) {
		checkBreaker(ctx, t, tp, inherits, proxyAddr(7600), 1)
		checkTripLogged(t, d, "default/inherits")
	})
	t.Run("own max_connections 2", func(t *testing.T) {
		checkBreaker(ctx, t, tp, own, proxyAddr(7601), 2)
		checkTripLogged(t, d, "default/own-breaker")
	})
}

// checkBreaker opens max connections to addr, each proven live by an echo,
// checks that one more is closed without reaching srv, closes one of them
// and checks that a new connection then gets through.
func checkBreaker(ctx context.Context, t *testing.T, tp *topology, srv *upstreamServer, addr string, max int) {
	t.Helper()
	base := srv.accepted.Load()
	var open []net.Conn
	defer func() {
		for _, c := range open {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range max {
		c, err := tp.connect(ctx, addr)
		if err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, max, err)
		}
		open = append(open, c)
		if _, err := roundTrip(c); err != nil {
			t.Fatalf("connection %d of %d (max_connections %d): %v", i+1, max, max, err)
		}
	}

	// The proxy accepts and closes at once, with a reset: the reset may
	// even beat the client's connect() to the finish.
	over, err := tp.connect(ctx, addr)
	switch {
	case isClosedByPeer(err):
		t.Logf("connection %d over max_connections %d reset during connect: %v", max+1, max, err)
	case err != nil:
		t.Fatalf("connection %d: connect: %v", max+1, err)
	default:
		elapsed, err := expectClosed(over, 5*time.Second)
		over.Close()
		if err != nil {
			t.Errorf("connection %d over max_connections %d: %v", max+1, max, err)
		} else {
			t.Logf("connection %d over max_connections %d closed after %v", max+1, max, elapsed)
		}
	}
	if got := srv.accepted.Load() - base; got != int64(max) {
		t.Errorf("upstream accepted %d connections, want %d: the refused one must not be dialed", got, max)
	}
	for i, c := range open {
		if err := echo(c); err != nil {
			t.Errorf("connection %d after the refusal: %v", i+1, err)
		}
	}

	// Close one; the proxy learns of it asynchronously (client FIN, then
	// the upstream's), so retry until a new connection gets through.
	open[0].Close()
	open[0] = nil
	deadline := time.Now().Add(10 * time.Second)
	attempts := 0
	for {
		attempts++
		c, err := tp.connect(ctx, addr)
		switch {
		case isClosedByPeer(err): // still refused; retry
		case err != nil:
			t.Fatalf("connection after closing one: connect: %v", err)
		default:
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			var g greeting
			if g, err = roundTrip(c); err == nil {
				open = append(open, c)
				t.Logf("after closing one, attempt %d reached %s", attempts, g.Upstream)
			} else {
				c.Close()
			}
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after closing one of %d connections, no new connection got through in 10 s (%d attempts; last: %v)", max, attempts, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := srv.accepted.Load() - base; got != int64(max)+1 {
		t.Errorf("upstream accepted %d connections in all, want %d", got, max+1)
	}
}

// checkTripLogged waits for tcpmapd to log a circuit breaker trip naming
// the mapping (the relay logs trips at most once a second per route, and
// each route here trips for the first time).
func checkTripLogged(t *testing.T, d *daemon, mapping string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := d.waitLog(ctx, "circuit breaker trip of "+mapping, func(e logEntry) bool {
		return strings.Contains(e.str("msg"), "circuit breaker") && strings.HasSuffix(e.str("mapping"), " "+mapping) &&
			e.str("reason") == "max_connections"
	})
	if err != nil {
		t.Error(err)
	}
}

// TestPolicyUnknownSNI: a client whose server name has no route gets an
// unrecognized_name alert, which Go's client reports as "unrecognized
// name"; a known name on the same listener still works.
func TestPolicyUnknownSNI(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream-host-1", 9999, false)
	tp.serveEcho(t, "upstream-host-2", 9999, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"docs/terminate.yaml"}, nil)})...)

	checkUnrecognizedName(t, "plain TLS listener", func() error {
		c, err := tp.connectTLS(ctx, proxyAddr(2222), "my-host-3")
		if err == nil {
			c.Close()
		}
		return err
	})
	g, err := tp.reachTLS(ctx, proxyAddr(2222), "my-host-1")
	if err != nil {
		t.Fatalf("my-host-1 after the refusal: %v", err)
	}
	checkGreeting(t, "my-host-1", g, want{upstream: "upstream-host-1", port: 9999})
}

// checkUnrecognizedName checks that handshake fails with the
// unrecognized_name alert.
func checkUnrecognizedName(t *testing.T, what string, handshake func() error) {
	t.Helper()
	err := handshake()
	switch {
	case err == nil:
		t.Errorf("%s: handshake with an unknown server name succeeded", what)
	case !strings.Contains(err.Error(), "unrecognized name"):
		t.Errorf("%s: handshake with an unknown server name: %v; want the unrecognized_name alert (\"unrecognized name\")", what, err)
	}
}

// TestPolicyAddress: one port on three addresses of the proxy, two IPv4
// and one IPv6, is three listeners with three upstreams.
func TestPolicyAddress(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	tp.addIPv6(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 7900, false)
	tp.serveEcho(t, "cockroach", 7900, false)
	tp.serveEcho(t, "upstream-host", 7900, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"policy/address.yaml"}, nil)})...)

	for _, tc := range []struct{ addr, upstream string }{
		{proxyA, "upstream"},
		{proxyB, "cockroach"},
		{proxyIP6, "upstream-host"},
	} {
		addr := net.JoinHostPort(tc.addr, "7900")
		g, err := tp.reach(ctx, addr)
		if err != nil {
			t.Errorf("%s: %v", addr, err)
			continue
		}
		checkGreeting(t, addr, g, want{upstream: tc.upstream, port: 7900})
	}
}

// TestPolicyMaxPending: circuit_breakers [{max_pending_requests: 1}] lets
// one connection wait for its upstream dial and closes the next one at
// once, while the first still waits.
func TestPolicyMaxPending(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	upstream := net.JoinHostPort(hostIP(t, "upstream"), "7650")
	tp.blackholeListener(ctx, t, upstream)
	d := tp.start(t, daemonArgs([]string{configDir(t, []string{"policy/pending.yaml"}, nil)})...)

	first, err := tp.connect(ctx, proxyAddr(7650))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// Wait until the proxy's dial for the first connection is under way,
	// so that the second one finds the pending slot taken.
	tp.waitSynSent(ctx, t, upstream, 1)

	second, err := tp.connect(ctx, proxyAddr(7650))
	switch {
	case isClosedByPeer(err):
		t.Logf("second connection reset during connect: %v", err)
	case err != nil:
		t.Fatal(err)
	default:
		_, err := expectClosed(second, 5*time.Second)
		second.Close()
		if err != nil {
			t.Errorf("second connection over max_pending_requests 1: %v", err)
		}
	}
	// The first is still waiting for its dial (20 s connect timeout).
	_ = first.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := first.Read(make([]byte, 1)); n > 0 || !isTimeout(err) {
		t.Errorf("first connection, pending: read %d bytes, %v; want it still open and silent", n, err)
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := d.waitLog(lctx, "circuit breaker trip, reason max_pending_requests", func(e logEntry) bool {
		return strings.Contains(e.str("msg"), "circuit breaker") && e.str("reason") == "max_pending_requests"
	}); err != nil {
		t.Error(err)
	}
}

// blackholeListener opens addr in the upstream namespace as a listener
// that never accepts, with its accept queue filled by connections from the
// proxy namespace: Linux then drops further SYNs, so a dial to addr stays
// pending until its timeout.
func (tp *topology) blackholeListener(ctx context.Context, t *testing.T, addr string) {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	fd := -1
	err := tp.upstream.do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
			return err
		}
		return unix.Listen(fd, 0)
	})
	if fd >= 0 {
		t.Cleanup(func() { unix.Close(fd) })
	}
	if err != nil {
		t.Fatalf("blackhole listener %s: %v", addr, err)
	}
	for i := 0; ; i++ {
		if i == 8 {
			t.Fatalf("blackhole listener %s: the accept queue still takes connections after %d", addr, i)
		}
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		c, err := tp.proxy.dial(dctx, addr)
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
				t.Fatalf("blackhole listener %s: filling dial: %v", addr, err)
			}
			return // the queue is full: SYNs are dropped
		}
		t.Cleanup(func() { c.Close() })
	}
}

// waitSynSent waits until the proxy namespace has n connections to addr in
// SYN-SENT.
func (tp *topology) waitSynSent(ctx context.Context, t *testing.T, addr string, n int) {
	t.Helper()
	for {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", tp.proxy.name,
			"ss", "-Htn", "state", "syn-sent", "dst", addr).Output()
		if err != nil {
			t.Fatalf("ss in the proxy namespace: %v", err)
		}
		if got := strings.Count(strings.TrimSpace(string(out)), "\n") + 1; len(strings.TrimSpace(string(out))) > 0 && got >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no %d connection(s) to %s in SYN-SENT in the proxy namespace: %v", n, addr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
