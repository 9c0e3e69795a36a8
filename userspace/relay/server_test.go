package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

func TestWeightedPick(t *testing.T) {
	ua := startUpstream(t, "a", nil, bannerEcho("a"))
	ub := startUpstream(t, "b", nil, bannerEcho("b"))
	uc := startUpstream(t, "c", nil, bannerEcho("c"))
	draws := []int{0, 9, 10, 39, 40, 99}
	want := []string{"a", "a", "b", "b", "c", "c"}
	var mu sync.Mutex
	var ns []int
	next := 0
	rnd := func(n int) int {
		mu.Lock()
		defer mu.Unlock()
		ns = append(ns, n)
		x := draws[next]
		next++
		return x
	}
	_, l := startRelay(t, tcpListener(
		backend("a", ua.addr(), 10), backend("b", ub.addr(), 30), backend("c", uc.addr(), 60),
	), Options{Rand: rnd})
	for i, w := range want {
		got := readLine(t, dial(t, relayAddr(l)))
		if got != w+" sni= cn=" {
			t.Errorf("connection %d (draw %d) went to %q, want %s", i, draws[i], got, w)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ns) != len(want) {
		t.Errorf("Rand called %d times, want %d", len(ns), len(want))
	}
	for _, n := range ns {
		if n != 100 {
			t.Errorf("Rand called with n = %d, want the total weight 100", n)
		}
	}
}

// TestUpdate: new connections follow the new routes, old ones keep theirs.
func TestUpdate(t *testing.T) {
	u1 := startUpstream(t, "u1", nil, bannerEcho("u1"))
	u2 := startUpstream(t, "u2", nil, bannerEcho("u2"))
	srv, l := startRelay(t, tcpListener(backend("m1", u1.addr(), 100)), Options{})

	before := dial(t, relayAddr(l))
	if got := readLine(t, before); got != "u1 sni= cn=" {
		t.Fatalf("before update: %q", got)
	}
	next := l
	next.Routes = []snapshot.Route{{Backends: []snapshot.Backend{backend("m2", u2.addr(), 100)}}}
	if err := srv.Update(next); err != nil {
		t.Fatal(err)
	}
	after := dial(t, relayAddr(l))
	if got := readLine(t, after); got != "u2 sni= cn=" {
		t.Errorf("after update: %q, want u2", got)
	}
	echoRoundTrip(t, before, "old connection still on u1")

	st := srv.Stats()
	if _, ok := st.Mappings[mappingRef("m1")]; ok {
		t.Errorf("stats still list the removed mapping m1")
	}
	if got := st.Mappings[mappingRef("m2")].Total; got != 1 {
		t.Errorf("m2 total = %d, want 1", got)
	}

	other := next
	other.Port++
	if err := srv.Update(other); err == nil {
		t.Errorf("Update with another port succeeded, want an error")
	}
}

func TestUpdateKeepsCounters(t *testing.T) {
	u := startUpstream(t, "u", nil, bannerEcho("u"))
	srv, l := startRelay(t, tcpListener(backend("m", u.addr(), 100)), Options{})
	readLine(t, dial(t, relayAddr(l)))
	if err := srv.Update(l); err != nil {
		t.Fatal(err)
	}
	readLine(t, dial(t, relayAddr(l)))
	if got := srv.Stats().Mappings[mappingRef("m")].Total; got != 2 {
		t.Errorf("total after update = %d, want 2", got)
	}
}

// refused waits until connecting to addr is refused.
func refused(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
}

func TestShutdownDrains(t *testing.T) {
	u := startUpstream(t, "u", nil, bannerEcho("u"))
	srv, l := startRelay(t, tcpListener(backend("m", u.addr(), 100)), Options{})
	c := dial(t, relayAddr(l))
	readLine(t, c)

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	refused(t, relayAddr(l))
	echoRoundTrip(t, c, "draining")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a live connection", err)
	default:
	}
	c.Close()
	if err := <-done; err != nil {
		t.Errorf("Shutdown = %v, want nil", err)
	}
}

func TestShutdownForcesAfterDeadline(t *testing.T) {
	u := startUpstream(t, "u", nil, bannerEcho("u"))
	srv, l := startRelay(t, tcpListener(backend("m", u.addr(), 100)), Options{})
	c := dial(t, relayAddr(l))
	readLine(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want deadline exceeded", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client read after forced shutdown = %v, want closed", err)
	}
	if a := srv.Stats().Listener.Active; a != 0 {
		t.Errorf("active after Shutdown = %d, want 0", a)
	}
}

// TestCloseInterruptsHandshake: Close does not wait for a silent TLS
// client's handshake timeout.
func TestCloseInterruptsHandshake(t *testing.T) {
	pki := newPKI(t)
	u := startUpstream(t, "u", nil, bannerEcho("u"))
	l := tlsListener(tlsRoute("a.example.com", termination(t, pki, "a.example.com"), backend("m", u.addr(), 100)))
	srv, l := startRelay(t, l, Options{HandshakeTimeout: time.Hour})
	c := dial(t, relayAddr(l))
	waitFor(t, "connection accepted", func() bool { return srv.Stats().Listener.Active == 1 })
	srv.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client read after Close = %v, want closed", err)
	}
	if got := srv.Stats().Listener.HandshakeTimeout + srv.Stats().Listener.HandshakeRejected; got != 0 {
		t.Errorf("a handshake closed by Close counted as a failure (%d)", got)
	}
}

// flakyListener fails its first accepts with the given error.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
	err   error
}

func (f *flakyListener) Accept() (net.Conn, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, f.err
	}
	return f.Listener.Accept()
}

func TestAcceptErrors(t *testing.T) {
	u := startUpstream(t, "u", nil, bannerEcho("u"))
	newServer := func() (*Server, net.Listener) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewServer(tcpListener(backend("m", u.addr(), 100)), Options{Dialer: testDialer{}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, ln
	}

	t.Run("temporary", func(t *testing.T) {
		s, ln := newServer()
		fl := &flakyListener{Listener: ln, err: &net.OpError{Op: "accept", Net: "tcp",
			Err: os.NewSyscallError("accept4", syscall.EMFILE)}}
		fl.fails.Store(3)
		served := make(chan error, 1)
		go func() { served <- s.Serve(fl) }()
		c := dial(t, ln.Addr().String())
		if got := readLine(t, c); got != "u sni= cn=" {
			t.Errorf("banner = %q", got)
		}
		if got := s.Stats().Listener.AcceptErrors; got != 3 {
			t.Errorf("accept errors = %d, want 3", got)
		}
		s.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve = %v, want nil after Close", err)
		}
	})
	t.Run("permanent", func(t *testing.T) {
		s, ln := newServer()
		fl := &flakyListener{Listener: ln, err: errors.New("listener broke")}
		fl.fails.Store(1)
		if err := s.Serve(fl); err == nil || !strings.Contains(err.Error(), "listener broke") {
			t.Errorf("Serve = %v, want the accept error", err)
		}
	})
}

func TestNewServerErrors(t *testing.T) {
	up := snapshot.Upstream{Host: "127.0.0.1", Port: 1}
	failServer := func(*snapshot.TLSServer) (*tls.Config, error) { return nil, errors.New("bad key") }
	failClient := func(*snapshot.TLSClient) (*tls.Config, error) { return nil, errors.New("bad CA") }
	term := &snapshot.TLSServer{}
	orig := backend("o", up, 100)
	orig.Origination = &snapshot.TLSClient{}
	twoRoutes := tcpListener(backend("a", up, 100))
	twoRoutes.Routes = append(twoRoutes.Routes, twoRoutes.Routes[0])
	badProxy := backend("p", up, 100)
	badProxy.SendProxyProtocol = 3

	tests := []struct {
		name string
		l    snapshot.Listener
		opts Options
		want string // substring of the error
	}{
		{"no dialer", tcpListener(backend("a", up, 100)), Options{}, "Dialer is required"},
		{"server TLS fails", tlsListener(tlsRoute("a.example.com", term, backend("a", up, 100))),
			Options{Dialer: testDialer{}, ServerTLS: failServer}, `route "a.example.com"`},
		{"client TLS fails", tcpListener(orig),
			Options{Dialer: testDialer{}, ClientTLS: failClient}, "TCPMapping default/o: upstream TLS: bad CA"},
		{"no ClientTLS", tcpListener(orig), Options{Dialer: testDialer{}}, "ClientTLS is required"},
		{"no ServerTLS", tlsListener(tlsRoute("a.example.com", term, backend("a", up, 100))),
			Options{Dialer: testDialer{}}, "ServerTLS is required"},
		{"no termination", tlsListener(tlsRoute("a.example.com", nil, backend("a", up, 100))),
			Options{Dialer: testDialer{}, ServerTLS: testServerTLS}, "no TLS termination"},
		{"two TCP routes", twoRoutes, Options{Dialer: testDialer{}}, "exactly one route"},
		{"send-proxy-protocol 3", tcpListener(badProxy), Options{Dialer: testDialer{}}, "TCPMapping default/p: send-proxy-protocol 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewServer(tt.l, tt.opts)
			if err == nil {
				s.Close()
				t.Fatalf("NewServer succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestManyConnectionsNoLeak relays 10,000 short connections in parallel
// batches and checks every goroutine is gone afterwards while the server
// keeps running.
func TestManyConnectionsNoLeak(t *testing.T) {
	const total, batch = 10000, 100
	u := startUpstream(t, "u", nil, echo)
	srv, l := startRelay(t, tcpListener(backend("m", u.addr(), 100)), Options{})
	addr := relayAddr(l)
	ignore := goleak.IgnoreCurrent()

	var failures atomic.Int32
	for range total / batch {
		var wg sync.WaitGroup
		for range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := shortConversation(addr); err != nil && failures.Add(1) <= 5 {
					t.Errorf("connection: %v", err)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
	waitFor(t, "all connections closed", func() bool { return srv.Stats().Listener.Active == 0 })
	goleak.VerifyNone(t, ignore)
	st := srv.Stats()
	if st.Listener.Accepted != total || st.Mappings[mappingRef("m")].Total != total {
		t.Errorf("accepted %d, mapping total %d; want %d", st.Listener.Accepted, st.Mappings[mappingRef("m")].Total, total)
	}
	if got, want := st.Mappings[mappingRef("m")].BytesToClient, uint64(8*total); got != want {
		t.Errorf("bytes to client = %d, want %d", got, want)
	}
}

func shortConversation(addr string) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, "12345678"); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(got) != "12345678" {
		return errors.New("echo mismatch: " + string(got))
	}
	return nil
}
