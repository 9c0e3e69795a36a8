// Package upstream dials the service behind a route: it resolves DNS names
// through a small cache, honours enable_ipv4/enable_ipv6, prefers IPv6 with
// a fallback to IPv4, balances a name's addresses round-robin and bounds
// the whole dial by the route's connect timeout.
//
// It is shared by the userspace relay and the kernel splice path, which
// both connect to upstreams from Go, so that both pick addresses the same
// way.
package upstream

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// DefaultTTL is how long resolved addresses are used before the name is
// resolved again.
const DefaultTTL = 30 * time.Second

// Keepalive on upstream connections: a silent peer is probed after 30s and
// declared dead after three unanswered probes 10s apart, so a vanished
// upstream (a rescheduled pod, a dropped conntrack entry) frees its relay
// within about a minute instead of the kernel's two hours.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}

// Resolver looks up the addresses of a host name. *net.Resolver (and so
// net.DefaultResolver) satisfies it; tests inject fakes.
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// Options configure a Dialer. The zero value is usable.
type Options struct {
	// TTL is how long the addresses of a name are cached before the name
	// is resolved again; 0 means DefaultTTL. Go's resolver does not expose
	// the TTL of DNS records, so this is a fixed cache lifetime, not the
	// record's TTL: keep it short enough to follow Service endpoint changes
	// (headless Services), long enough to spare the resolver a lookup per
	// connection.
	TTL time.Duration
	// Resolver resolves names; nil means net.DefaultResolver.
	Resolver Resolver
	// Logger receives warnings about stale addresses and debug details of
	// dials; nil means no logging.
	Logger *zap.Logger
	// Now is the clock of the cache; nil means time.Now. Connect timeouts
	// always use the real clock.
	Now func() time.Time
}

// Dialer connects to upstreams. It is safe for concurrent use; one Dialer
// should serve the whole process so that all connections share its cache
// and round-robin counters.
type Dialer struct {
	ttl      time.Duration
	retry    time.Duration // how long stale addresses are used after a failed lookup before asking again
	evict    time.Duration // how long an unused name stays cached
	resolver Resolver
	log      *zap.Logger
	now      func() time.Time
	net      net.Dialer

	mu      sync.Mutex
	entries map[string]*entry // by host name as written in the Upstream
}

// NewDialer returns a Dialer with opts, defaults filled in.
func NewDialer(opts Options) *Dialer {
	d := &Dialer{
		ttl:      opts.TTL,
		resolver: opts.Resolver,
		log:      opts.Logger,
		now:      opts.Now,
		net:      net.Dialer{KeepAliveConfig: keepAlive},
		entries:  make(map[string]*entry),
	}
	if d.ttl <= 0 {
		d.ttl = DefaultTTL
	}
	if d.resolver == nil {
		d.resolver = net.DefaultResolver
	}
	if d.log == nil {
		d.log = zap.NewNop()
	}
	if d.now == nil {
		d.now = time.Now
	}
	// A dead resolver should cost one lookup per few seconds per name, not
	// one per connection, while a recovered one is noticed quickly.
	d.retry = min(d.ttl, 5*time.Second)
	d.evict = max(10*d.ttl, 5*time.Minute)
	return d
}

// Dial connects to up within timeout (and ctx); timeout <= 0 leaves only
// ctx to bound it. The returned connection has TCP_NODELAY (Go's default)
// and keepalive enabled.
//
// An IP literal in up.Host is dialled as is: enable_ipv4/enable_ipv6 have
// no effect on it, as Emissary documents. A name is resolved through the
// cache and its addresses filtered by the two flags. With both enabled
// IPv6 is preferred: the IPv6 addresses get half of the time left after
// resolution and IPv4 the rest, so a black-holed IPv6 path still leaves
// IPv4 a fair chance. Within a family the addresses are tried in
// round-robin order, rotating by one on every Dial of the same name, and a
// failed connect moves on to the next address; each attempt gets an equal
// share of the family's time, but at least two seconds when there is that
// much left, as net.Dialer does.
//
// When a name cannot be resolved but was resolved before, the last good
// addresses are used (and a warning logged once per TTL). If a lookup of
// an expired name has not answered within half of the time left, those
// stale addresses are used too rather than spending the whole timeout on
// the resolver.
func (d *Dialer) Dial(ctx context.Context, up snapshot.Upstream, timeout time.Duration) (*net.TCPConn, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, timeout, &timeoutError{after: timeout})
		defer cancel()
	}
	target := up.Address()
	if up.Port < 1 || up.Port > 65535 {
		return nil, fmt.Errorf("dial upstream %s: port %d out of range", target, up.Port)
	}
	if up.Host == "" {
		return nil, fmt.Errorf("dial upstream %s: empty host", target)
	}
	port := uint16(up.Port)

	if ip, err := netip.ParseAddr(up.Host); err == nil {
		return d.connect(ctx, target, port, [][]netip.Addr{{ip}})
	}
	if !up.EnableIPv4 && !up.EnableIPv6 {
		return nil, fmt.Errorf("dial upstream %s: both enable_ipv4 and enable_ipv6 are false", target)
	}
	addrs, e, err := d.resolve(ctx, up.Host)
	if err != nil {
		return nil, fmt.Errorf("resolve upstream %s: %w", up.Host, err)
	}
	var v6, v4 []netip.Addr
	for _, a := range addrs {
		switch {
		case a.Is4() && up.EnableIPv4:
			v4 = append(v4, a)
		case a.Is6() && up.EnableIPv6:
			v6 = append(v6, a)
		}
	}
	switch {
	case len(v4)+len(v6) > 0:
	case !up.EnableIPv6:
		return nil, fmt.Errorf("resolve upstream %s: no IPv4 address (enable_ipv6 is false)", up.Host)
	case !up.EnableIPv4:
		return nil, fmt.Errorf("resolve upstream %s: no IPv6 address (enable_ipv4 is false)", up.Host)
	}
	n := e.next.Add(1) - 1
	var families [][]netip.Addr
	for _, fam := range [][]netip.Addr{v6, v4} {
		if len(fam) > 0 {
			families = append(families, rotate(fam, n))
		}
	}
	return d.connect(ctx, target, port, families)
}

// rotate returns addrs starting at index n modulo their number, wrapping.
func rotate(addrs []netip.Addr, n uint64) []netip.Addr {
	k := int(n % uint64(len(addrs)))
	out := make([]netip.Addr, 0, len(addrs))
	return append(append(out, addrs[k:]...), addrs[:k]...)
}

// minAttempt is the least time one address gets when more are waiting,
// net.Dialer's "sane minimum": a connect across a slow link needs a few
// round trips of the SYN.
const minAttempt = 2 * time.Second

// connect tries families in order, each but the last getting half of the
// time left, and the addresses of a family in order.
func (d *Dialer) connect(ctx context.Context, target string, port uint16, families [][]netip.Addr) (*net.TCPConn, error) {
	var attempts []error
	for i, fam := range families {
		famCtx, famCancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok && i < len(families)-1 {
			famCtx, famCancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
		}
		for j, a := range fam {
			ap := netip.AddrPortFrom(a, port)
			attemptCtx, cancel, budget := partial(famCtx, len(fam)-j)
			// DialContext, not DialTCP with a zero local AddrPort: that
			// binds 0.0.0.0:0 before connecting, and a port picked by
			// bind() cannot be shared with TIME_WAIT sockets the way
			// connect()'s own choice can, so under connection churn dials
			// fail with EADDRINUSE.
			nc, err := d.net.DialContext(attemptCtx, "tcp", ap.String())
			cancel()
			var conn *net.TCPConn
			if err == nil {
				conn = nc.(*net.TCPConn)
			}
			if err == nil {
				famCancel()
				if len(attempts) > 0 {
					d.log.Debug("connected to upstream after failures",
						zap.String("upstream", target), zap.Stringer("address", ap), zap.Errors("failures", attempts))
				}
				return conn, nil
			}
			attempts = append(attempts, &connectError{addr: ap, budget: budget, err: err})
			if ctx.Err() != nil || famCtx.Err() != nil {
				break
			}
		}
		famCancel()
		if ctx.Err() != nil {
			break
		}
	}
	return nil, &dialError{target: target, cause: contextCause(ctx), attempts: attempts}
}

// partial bounds one of n remaining attempts to an equal share of ctx's
// time left, but at least minAttempt when that much is left. budget is the
// share, 0 when ctx has no deadline.
func partial(ctx context.Context, n int) (context.Context, context.CancelFunc, time.Duration) {
	dl, ok := ctx.Deadline()
	if !ok {
		return ctx, func() {}, 0
	}
	left := time.Until(dl)
	share := left / time.Duration(n)
	if share < minAttempt {
		share = min(minAttempt, left)
	}
	c, cancel := context.WithTimeout(ctx, share)
	return c, cancel, share
}
