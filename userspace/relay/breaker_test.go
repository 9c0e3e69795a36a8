package relay

import (
	"context"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// limitedListener is a TCP listener whose route has the given limits.
func limitedListener(b snapshot.Backend, maxConn, maxPending int) snapshot.Listener {
	l := tcpListener(b)
	l.Routes[0].CircuitBreaker = snapshot.CircuitBreaker{MaxConnections: maxConn, MaxPendingRequests: maxPending}
	return l
}

// through opens a connection and waits for the upstream's banner, so its
// upstream connection is established.
func through(t *testing.T, addr, upstream string) *net.TCPConn {
	t.Helper()
	c := dial(t, addr)
	if got := readLine(t, c); got != upstream+" sni= cn=" {
		t.Fatalf("banner = %q, want upstream %s", got, upstream)
	}
	return c
}

func TestMaxConnections(t *testing.T) {
	u := startUpstream(t, "u", nil, bannerEcho("u"))
	core, logs := observer.New(zapcore.InfoLevel)
	srv, l := startRelay(t, limitedListener(backend("m", u.addr(), 100), 3, 1024), Options{Logger: zap.New(core)})
	addr := relayAddr(l)

	var open []*net.TCPConn
	for range 3 {
		open = append(open, through(t, addr, "u"))
	}
	expectReset(t, addr)
	waitFor(t, "refusal counted", func() bool {
		return srv.Stats().Mappings[mappingRef("m")].Refusals.MaxConnections == 1
	})
	st := srv.Stats()
	if got, want := st.Routes[""], (RouteStats{Active: 3, MaxConnections: 3, MaxPendingRequests: 1024, MaxConnectionsTrips: 1}); got != want {
		t.Errorf("route stats = %+v, want %+v", got, want)
	}
	if got := st.Mappings[mappingRef("m")].Total; got != 3 {
		t.Errorf("mapping total = %d, want 3 (refusals are not dialed)", got)
	}
	trips := logs.FilterMessage("circuit breaker tripped: connection refused").All()
	if len(trips) != 1 {
		t.Fatalf("trip log lines = %d, want 1", len(trips))
	}
	if f := trips[0].ContextMap(); f["reason"] != "max_connections" || f["trips"] != int64(1) || f["mapping"] != "TCPMapping default/m" {
		t.Errorf("trip log fields = %v", f)
	}

	open[0].Close()
	waitFor(t, "slot released", func() bool { return srv.Stats().Routes[""].Active == 2 })
	c := through(t, addr, "u")
	echoRoundTrip(t, c, "fourth after one left")
	for _, c := range open[1:] {
		echoRoundTrip(t, c, "unharmed")
	}
}

// gateDialer blocks every dial until gate is closed (or the server
// closes).
type gateDialer struct{ gate chan struct{} }

func (g gateDialer) Dial(ctx context.Context, up snapshot.Upstream, timeout time.Duration) (*net.TCPConn, error) {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return testDialer{}.Dial(ctx, up, timeout)
}

func TestMaxPendingRequests(t *testing.T) {
	tests := []struct {
		name              string
		maxConn, maxPend  int
		wantConn, wantPen uint64 // refusals counted
	}{
		{"max_pending_requests", 1024, 2, 0, 1},
		// A dial in progress holds a connection slot too.
		{"dials count against max_connections", 2, 1024, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := startUpstream(t, "u", nil, bannerEcho("u"))
			gate := make(chan struct{})
			srv, l := startRelay(t, limitedListener(backend("m", u.addr(), 100), tt.maxConn, tt.maxPend),
				Options{Dialer: gateDialer{gate}})
			addr := relayAddr(l)

			waiting := []*net.TCPConn{dial(t, addr), dial(t, addr)}
			waitFor(t, "two dials pending", func() bool { return srv.Stats().Routes[""].Pending == 2 })
			expectReset(t, addr)
			m := srv.Stats().Mappings[mappingRef("m")].Refusals
			if m.MaxConnections != tt.wantConn || m.MaxPendingRequests != tt.wantPen {
				t.Errorf("refusals = %+v, want %d max_connections, %d max_pending_requests", m, tt.wantConn, tt.wantPen)
			}

			close(gate)
			for _, c := range waiting {
				if got := readLine(t, c); got != "u sni= cn=" {
					t.Errorf("banner after the dial went through = %q", got)
				}
			}
			if r := srv.Stats().Routes[""]; r.Pending != 0 || r.Active != 2 {
				t.Errorf("route after dials = %+v, want 0 pending, 2 active", r)
			}
		})
	}
}

// TestBreakerSurvivesUpdate: connections admitted before an Update count
// against the route's limits after it, and new limits apply at once.
func TestBreakerSurvivesUpdate(t *testing.T) {
	u := startUpstream(t, "u", nil, bannerEcho("u"))
	srv, l := startRelay(t, limitedListener(backend("m", u.addr(), 100), 2, 1024), Options{})
	addr := relayAddr(l)
	a, b := through(t, addr, "u"), through(t, addr, "u")

	// The same host, another mapping: the route survives.
	next := limitedListener(backend("m2", u.addr(), 100), 2, 1024)
	next.Address, next.Port = l.Address, l.Port
	if err := srv.Update(next); err != nil {
		t.Fatal(err)
	}
	expectReset(t, addr)
	waitFor(t, "refusal counted on the new mapping", func() bool {
		return srv.Stats().Mappings[mappingRef("m2")].Refusals.MaxConnections == 1
	})
	if got := srv.Stats().Routes[""].Active; got != 2 {
		t.Errorf("route active after Update = %d, want 2", got)
	}

	next.Routes[0].CircuitBreaker.MaxConnections = 3
	if err := srv.Update(next); err != nil {
		t.Fatal(err)
	}
	c := through(t, addr, "u")
	expectReset(t, addr)

	for _, old := range []*net.TCPConn{a, b, c} {
		old.Close()
	}
	waitFor(t, "old connections released into the same counts", func() bool {
		return srv.Stats().Routes[""].Active == 0
	})
	st := srv.Stats().Routes[""]
	if st.MaxConnections != 3 || st.MaxConnectionsTrips != 2 {
		t.Errorf("route stats = %+v, want limit 3 and 2 trips", st)
	}
}

func TestTripLogRateLimit(t *testing.T) {
	var b breaker
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at        time.Duration
		wantTrips int
		wantLog   bool
	}{
		{0, 1, true},
		{100 * time.Millisecond, 0, false},
		{900 * time.Millisecond, 0, false},
		{time.Second, 3, true},
		{1500 * time.Millisecond, 0, false},
		{5 * time.Second, 2, true},
	}
	for _, s := range steps {
		trips, log := b.logTrip(t0.Add(s.at))
		if trips != s.wantTrips || log != s.wantLog {
			t.Errorf("trip at +%v: (%d, %v), want (%d, %v)", s.at, trips, log, s.wantTrips, s.wantLog)
		}
	}
}

func TestEffectiveLimits(t *testing.T) {
	tests := []struct {
		in   snapshot.CircuitBreaker
		want limits
	}{
		{snapshot.CircuitBreaker{}, limits{maxConnections: 1024, maxPending: 1024}},
		{snapshot.CircuitBreaker{Priority: "high", MaxConnections: 3, MaxPendingRequests: 7}, limits{3, 7, "high"}},
		{snapshot.CircuitBreaker{MaxConnections: -1}, limits{maxConnections: 1024, maxPending: 1024}},
	}
	for _, tt := range tests {
		if got := effectiveLimits(tt.in); got != tt.want {
			t.Errorf("effectiveLimits(%+v) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}
