package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testCtx is the deadline every test runs under: a hung socket fails the
// test in seconds.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// server is a loopback listener that accepts and closes connections,
// counting them.
type server struct {
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
	once     sync.Once
}

func (s *server) close() {
	s.once.Do(func() {
		s.ln.Close()
		s.wg.Wait()
	})
}

func serve(t *testing.T, ln net.Listener) *server {
	t.Helper()
	s := &server{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(s.close)
	return s
}

// listenSamePort opens one server per IP, all on one port (an Upstream
// has a single port), and returns them and the port.
func listenSamePort(t *testing.T, ips ...string) ([]*server, int) {
	t.Helper()
	var lastErr error
	for try := 0; try < 20; try++ {
		var lns []net.Listener
		port := 0
		for _, ip := range ips {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				lastErr = err
				break
			}
			lns = append(lns, ln)
			port = ln.Addr().(*net.TCPAddr).Port
		}
		if len(lns) == len(ips) {
			servers := make([]*server, len(lns))
			for i, ln := range lns {
				servers[i] = serve(t, ln)
			}
			return servers, port
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatalf("listen on %v with one port: %v", ips, lastErr)
	return nil, 0
}

// requireIPv6 skips the test when ::1 cannot be listened on.
func requireIPv6(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("skipping: IPv6 loopback ::1 is not available here (%v)", err)
	}
	ln.Close()
}

// waitFor polls cond until it holds or a few seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeResolver answers from a function and counts lookups.
type fakeResolver struct {
	calls  atomic.Int64
	mu     sync.Mutex
	answer func(ctx context.Context, host string) ([]net.IPAddr, error)
}

func (r *fakeResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	r.calls.Add(1)
	r.mu.Lock()
	f := r.answer
	r.mu.Unlock()
	return f(ctx, host)
}

func (r *fakeResolver) set(f func(ctx context.Context, host string) ([]net.IPAddr, error)) {
	r.mu.Lock()
	r.answer = f
	r.mu.Unlock()
}

// answers makes a fakeResolver answer every name with ips.
func answers(ips ...string) func(context.Context, string) ([]net.IPAddr, error) {
	var out []net.IPAddr
	for _, s := range ips {
		out = append(out, net.IPAddr{IP: net.ParseIP(s)})
	}
	return func(context.Context, string) ([]net.IPAddr, error) { return out, nil }
}

var errResolverDown = errors.New("server misbehaving")

func failing(context.Context, string) ([]net.IPAddr, error) {
	return nil, &net.DNSError{Err: errResolverDown.Error(), Name: "foo", IsTemporary: true}
}

// clock is an injectable Now.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// remoteIP is the address a client connection reached.
func remoteIP(t *testing.T, c *net.TCPConn) string {
	t.Helper()
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().String()
}

// dialIP dials and returns the IP reached, closing the connection.
func dialIP(t *testing.T, ctx context.Context, d *Dialer, host string, port int, v4, v6 bool) string {
	t.Helper()
	c, err := d.Dial(ctx, upstreamFor(host, port, v4, v6), 5*time.Second)
	if err != nil {
		t.Fatalf("Dial(%s:%d): %v", host, port, err)
	}
	defer c.Close()
	return remoteIP(t, c)
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
