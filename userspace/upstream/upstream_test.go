package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tcpmap/tcpmap/internal/testutil"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

func upstreamFor(host string, port int, v4, v6 bool) snapshot.Upstream {
	return snapshot.Upstream{Service: fmt.Sprintf("%s:%d", host, port), Host: host, Port: port, EnableIPv4: v4, EnableIPv6: v6}
}

// noResolver fails the test if a lookup happens.
func noResolver(t *testing.T) *fakeResolver {
	return &fakeResolver{answer: func(_ context.Context, host string) ([]net.IPAddr, error) {
		t.Errorf("unexpected lookup of %q", host)
		return nil, errors.New("unexpected lookup")
	}}
}

func TestDialIPLiteral(t *testing.T) {
	for _, tc := range []struct {
		name, ip string
		v6       bool
	}{
		{"ipv4", "127.0.0.1", false},
		{"ipv6", "::1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.v6 {
				requireIPv6(t)
			}
			ctx := testCtx(t)
			srv, port := listenSamePort(t, tc.ip)
			d := NewDialer(Options{Resolver: noResolver(t)})
			// Both flags false: they do not apply to a literal.
			got := dialIP(t, ctx, d, tc.ip, port, false, false)
			if got != tc.ip {
				t.Errorf("reached %s, want %s", got, tc.ip)
			}
			waitFor(t, "accept", func() bool { return srv[0].accepted.Load() == 1 })
		})
	}
}

func TestPreferIPv6ThenFallBackToIPv4(t *testing.T) {
	requireIPv6(t)
	ctx := testCtx(t)
	srv, port := listenSamePort(t, "::1", "127.0.0.1")
	// IPv4 first in the answer: the preference must not be answer order.
	r := &fakeResolver{answer: answers("127.0.0.1", "::1")}
	d := NewDialer(Options{Resolver: r})

	if got, want := dialIP(t, ctx, d, "both.test", port, true, true), "::1"; got != want {
		t.Errorf("with both families: reached %s, want %s", got, want)
	}
	srv[0].close()
	if got, want := dialIP(t, ctx, d, "both.test", port, true, true), "127.0.0.1"; got != want {
		t.Errorf("with ::1 closed: reached %s, want %s", got, want)
	}
	waitFor(t, "accepts", func() bool { return srv[0].accepted.Load() == 1 && srv[1].accepted.Load() == 1 })
	if got := r.calls.Load(); got != 1 {
		t.Errorf("lookups = %d, want 1", got)
	}
}

func TestFamilyFilter(t *testing.T) {
	ctx := testCtx(t)
	_, port := listenSamePort(t, "127.0.0.1")
	for _, tc := range []struct {
		name    string
		answer  []string
		v4, v6  bool
		want    string // IP reached
		wantErr string // with %d for the port
	}{
		{name: "ipv4 only skips ipv6", answer: []string{"::1", "127.0.0.1"}, v4: true, want: "127.0.0.1"},
		{name: "ipv4 only, only ipv6 answers", answer: []string{"::1"}, v4: true,
			wantErr: "resolve upstream f.test: no IPv4 address (enable_ipv6 is false)"},
		{name: "ipv6 only, only ipv4 answers", answer: []string{"127.0.0.1"}, v6: true,
			wantErr: "resolve upstream f.test: no IPv6 address (enable_ipv4 is false)"},
		{name: "both disabled", answer: []string{"127.0.0.1"},
			wantErr: "dial upstream f.test:%d: both enable_ipv4 and enable_ipv6 are false"},
		{name: "ipv4-mapped counts as ipv4", answer: []string{"::ffff:127.0.0.1"}, v4: true, want: "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewDialer(Options{Resolver: &fakeResolver{answer: answers(tc.answer...)}})
			c, err := d.Dial(ctx, upstreamFor("f.test", port, tc.v4, tc.v6), 5*time.Second)
			if tc.wantErr != "" {
				if c != nil {
					c.Close()
				}
				want := tc.wantErr
				if strings.Contains(want, "%d") {
					want = fmt.Sprintf(want, port)
				}
				if err == nil || err.Error() != want {
					t.Fatalf("err = %v, want %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := remoteIP(t, c); got != tc.want {
				t.Errorf("reached %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRoundRobin(t *testing.T) {
	ctx := testCtx(t)
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	srv, port := listenSamePort(t, ips...)
	// Shuffled answer: the order must come from sorting, not the resolver.
	d := NewDialer(Options{Resolver: &fakeResolver{answer: answers("127.0.0.3", "127.0.0.1", "127.0.0.2")}})

	var got []string
	for range 6 {
		got = append(got, dialIP(t, ctx, d, "rr.test", port, true, true))
	}
	want := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1", "127.0.0.2", "127.0.0.3"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("order = %v, want %v", got, want)
	}
	waitFor(t, "6 accepts", func() bool {
		return srv[0].accepted.Load()+srv[1].accepted.Load()+srv[2].accepted.Load() == 6
	})
	for i, s := range srv {
		if n := s.accepted.Load(); n != 2 {
			t.Errorf("%s accepted %d, want 2", ips[i], n)
		}
	}
}

func TestNextAddressAfterRefusal(t *testing.T) {
	ctx := testCtx(t)
	// Only 127.0.0.2 listens; 127.0.0.1 and .3 refuse.
	srv, port := listenSamePort(t, "127.0.0.2")
	d := NewDialer(Options{Resolver: &fakeResolver{answer: answers("127.0.0.1", "127.0.0.2", "127.0.0.3")}})
	for i := range 3 {
		if got := dialIP(t, ctx, d, "next.test", port, true, true); got != "127.0.0.2" {
			t.Errorf("dial %d reached %s, want 127.0.0.2", i, got)
		}
	}
	waitFor(t, "3 accepts", func() bool { return srv[0].accepted.Load() == 3 })
}

func TestDialErrors(t *testing.T) {
	ctx := testCtx(t)
	port := testutil.FreePort(t)
	dnsNotFound := func(_ context.Context, host string) ([]net.IPAddr, error) {
		return nil, &net.DNSError{Err: "no such host", Name: host, Server: "10.96.0.10:53", IsNotFound: true}
	}
	for _, tc := range []struct {
		name    string
		host    string
		port    int
		answer  func(context.Context, string) ([]net.IPAddr, error)
		want    string
		wantIs  error
		wantDNS bool
	}{
		{name: "literal refused", host: "127.0.0.1", port: port,
			want:   fmt.Sprintf("dial upstream 127.0.0.1:%d: connect to 127.0.0.1:%d: connection refused", port, port),
			wantIs: syscall.ECONNREFUSED},
		{name: "every address refused", host: "two.test", port: port, answer: answers("127.0.0.2", "127.0.0.1"),
			want: fmt.Sprintf("dial upstream two.test:%d: connect to 127.0.0.1:%d: connection refused; "+
				"connect to 127.0.0.2:%d: connection refused", port, port, port),
			wantIs: syscall.ECONNREFUSED},
		{name: "no such host", host: "foo", port: port, answer: dnsNotFound,
			want: "resolve upstream foo: no such host", wantDNS: true},
		{name: "empty answer", host: "empty.test", port: port, answer: answers(),
			want: "resolve upstream empty.test: no addresses", wantIs: errNoAddresses},
		{name: "empty host", host: "", port: 80, want: "dial upstream :80: empty host"},
		{name: "port out of range", host: "127.0.0.1", port: 0,
			want: "dial upstream 127.0.0.1:0: port 0 out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := noResolver(t)
			if tc.answer != nil {
				r = &fakeResolver{answer: tc.answer}
			}
			d := NewDialer(Options{Resolver: r})
			c, err := d.Dial(ctx, upstreamFor(tc.host, tc.port, true, true), 5*time.Second)
			if err == nil {
				c.Close()
				t.Fatalf("Dial succeeded, want error %q", tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("error\n got %q\nwant %q", got, tc.want)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.wantIs)
			}
			var de *net.DNSError
			if tc.wantDNS && !errors.As(err, &de) {
				t.Errorf("error %v does not wrap *net.DNSError", err)
			}
		})
	}
}

func TestTTLExpiryReresolves(t *testing.T) {
	ctx := testCtx(t)
	_, port := listenSamePort(t, "127.0.0.1", "127.0.0.2")
	clk := newClock()
	r := &fakeResolver{answer: answers("127.0.0.1")}
	d := NewDialer(Options{Resolver: r, Now: clk.now, TTL: 30 * time.Second})

	steps := []struct {
		advance   time.Duration
		want      string
		wantCalls int64
	}{
		{0, "127.0.0.1", 1},
		{29 * time.Second, "127.0.0.1", 1}, // cached, although the answer has changed meanwhile
		{2 * time.Second, "127.0.0.2", 2},  // past the TTL: resolved again
		{10 * time.Second, "127.0.0.2", 2},
	}
	for i, s := range steps {
		clk.advance(s.advance)
		got := dialIP(t, ctx, d, "ttl.test", port, true, true)
		if got != s.want || r.calls.Load() != s.wantCalls {
			t.Errorf("step %d: reached %s after %d lookups, want %s after %d", i, got, r.calls.Load(), s.want, s.wantCalls)
		}
		if i == 0 {
			r.set(answers("127.0.0.2"))
		}
	}
}

func TestStaleAddressesOnResolveError(t *testing.T) {
	ctx := testCtx(t)
	_, port := listenSamePort(t, "127.0.0.1")
	clk := newClock()
	core, logs := observer.New(zapcore.WarnLevel)
	r := &fakeResolver{answer: answers("127.0.0.1")}
	d := NewDialer(Options{Resolver: r, Now: clk.now, TTL: 30 * time.Second, Logger: zap.New(core)})

	dialIP(t, ctx, d, "stale.test", port, true, true)
	r.set(failing)
	steps := []struct {
		name      string
		advance   time.Duration
		wantCalls int64
		wantWarns int
	}{
		{"expired, resolver fails", 31 * time.Second, 2, 1},
		{"within the retry pause: no lookup", 2 * time.Second, 2, 1},
		{"after the retry pause: lookup, no second warning within the TTL", 4 * time.Second, 3, 1},
		{"a TTL after the first warning: warned again", 30 * time.Second, 4, 2},
	}
	for _, s := range steps {
		clk.advance(s.advance)
		if got := dialIP(t, ctx, d, "stale.test", port, true, true); got != "127.0.0.1" {
			t.Errorf("%s: reached %s, want stale 127.0.0.1", s.name, got)
		}
		if got, warns := r.calls.Load(), logs.Len(); got != s.wantCalls || warns != s.wantWarns {
			t.Errorf("%s: %d lookups, %d warnings; want %d, %d", s.name, got, warns, s.wantCalls, s.wantWarns)
		}
	}
	if w := logs.All(); len(w) > 0 && w[0].ContextMap()["host"] != "stale.test" {
		t.Errorf("warning fields = %v, want host stale.test", w[0].ContextMap())
	}

	// A name never resolved has nothing stale to serve.
	_, err := d.Dial(ctx, upstreamFor("never.test", port, true, true), 5*time.Second)
	if want := "resolve upstream never.test: server misbehaving"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
}

// blockingResolver blocks every lookup until its context ends, and reports
// each lookup's return on returned.
func blockingResolver() (*fakeResolver, chan struct{}) {
	returned := make(chan struct{}, 16)
	return &fakeResolver{answer: func(ctx context.Context, _ string) ([]net.IPAddr, error) {
		<-ctx.Done()
		returned <- struct{}{}
		return nil, ctx.Err()
	}}, returned
}

func TestResolveTimeout(t *testing.T) {
	ctx := testCtx(t)
	r, returned := blockingResolver()
	d := NewDialer(Options{Resolver: r})

	start := time.Now()
	c, err := d.Dial(ctx, upstreamFor("slow.test", 80, true, true), 200*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatal("Dial succeeded against a resolver that never answers")
	}
	if want := "resolve upstream slow.test: timeout after 200ms"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Dial took %v with a 200ms timeout", elapsed)
	}
	// The abandoned lookup is cancelled, not left running.
	select {
	case <-returned:
	case <-ctx.Done():
		t.Fatal("lookup still running after its only caller gave up")
	}
}

func TestCallerCancelStopsDial(t *testing.T) {
	r, returned := blockingResolver()
	d := NewDialer(Options{Resolver: r})
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() {
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	_, err := d.Dial(ctx, upstreamFor("slow.test", 80, true, true), 5*time.Second)
	if want := "resolve upstream slow.test: context canceled"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
	select {
	case <-returned:
	case <-testCtx(t).Done():
		t.Fatal("lookup still running after its only caller gave up")
	}
}

func TestStaleAddressesWhenResolverHangs(t *testing.T) {
	ctx := testCtx(t)
	_, port := listenSamePort(t, "127.0.0.1")
	clk := newClock()
	r := &fakeResolver{answer: answers("127.0.0.1")}
	d := NewDialer(Options{Resolver: r, Now: clk.now})
	dialIP(t, ctx, d, "hang.test", port, true, true)

	blocking, returned := blockingResolver()
	r.set(blocking.answer)
	clk.advance(DefaultTTL + time.Second)
	c, err := d.Dial(ctx, upstreamFor("hang.test", port, true, true), time.Second)
	if err != nil {
		t.Fatalf("Dial with stale addresses and a hung resolver: %v", err)
	}
	c.Close()
	select {
	case <-returned:
	case <-ctx.Done():
		t.Fatal("abandoned lookup still running")
	}
	// The next Dial uses the stale addresses without waiting on the
	// resolver again.
	dialIP(t, ctx, d, "hang.test", port, true, true)
	if got := r.calls.Load(); got != 2 {
		t.Errorf("lookups = %d, want 2", got)
	}
}

func TestConcurrentDialsShareOneLookup(t *testing.T) {
	ctx := testCtx(t)
	srv, port := listenSamePort(t, "127.0.0.1")
	gate := make(chan struct{})
	r := &fakeResolver{answer: func(ctx context.Context, _ string) ([]net.IPAddr, error) {
		select {
		case <-gate:
			return []net.IPAddr{{IP: net.ParseIP("127.0.0.1")}}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}}
	d := NewDialer(Options{Resolver: r})

	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			c, err := d.Dial(ctx, upstreamFor("shared.test", port, true, true), 5*time.Second)
			if err == nil {
				c.Close()
			}
			errs <- err
		})
	}
	waitFor(t, "all dials waiting on one lookup", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		e := d.entries["shared.test"]
		return e != nil && e.flight != nil && e.flight.waiters == n
	})
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := r.calls.Load(); got != 1 {
		t.Errorf("lookups = %d, want 1", got)
	}
	waitFor(t, "accepts", func() bool { return srv[0].accepted.Load() == n })
}

func TestRotate(t *testing.T) {
	addrs := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}
	in := make([]netip.Addr, len(addrs))
	for i, a := range addrs {
		in[i] = mustAddr(a)
	}
	for _, tc := range []struct {
		n    uint64
		want string
	}{
		{0, "10.0.0.1 10.0.0.2 10.0.0.3"},
		{1, "10.0.0.2 10.0.0.3 10.0.0.1"},
		{5, "10.0.0.3 10.0.0.1 10.0.0.2"},
		{1<<64 - 1, "10.0.0.1 10.0.0.2 10.0.0.3"}, // counter wrap: 2^64-1 mod 3 == 0
	} {
		out := rotate(in, tc.n)
		var got []string
		for _, a := range out {
			got = append(got, a.String())
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("rotate(n=%d) = %v, want %s", tc.n, got, tc.want)
		}
	}
	if in[0] != mustAddr("10.0.0.1") {
		t.Error("rotate modified its input")
	}
}

func TestPartialBudget(t *testing.T) {
	for _, tc := range []struct {
		left      time.Duration
		n         int
		wantShare time.Duration
	}{
		{10 * time.Second, 1, 10 * time.Second},
		{10 * time.Second, 2, 5 * time.Second},
		{10 * time.Second, 10, 2 * time.Second}, // floor: 1s each would be too short
		{time.Second, 3, time.Second},           // floor capped by what is left
	} {
		ctx, cancel := context.WithTimeout(context.Background(), tc.left)
		_, pcancel, share := partial(ctx, tc.n)
		pcancel()
		cancel()
		// Allow for the time elapsed since the deadline was set.
		if share > tc.wantShare || share < tc.wantShare-100*time.Millisecond {
			t.Errorf("partial(%v left, %d) share = %v, want ~%v", tc.left, tc.n, share, tc.wantShare)
		}
	}
	_, cancel, share := partial(context.Background(), 3)
	cancel()
	if share != 0 {
		t.Errorf("share without deadline = %v, want 0", share)
	}
}
