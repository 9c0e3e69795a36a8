package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// entry is the cached resolution of one name. Fields other than next are
// guarded by Dialer.mu.
type entry struct {
	// addrs is the last good answer, sorted and deduplicated so that the
	// round-robin order survives a resolver that shuffles its answers;
	// nil until the name first resolves.
	addrs []netip.Addr
	// expires is when addrs are due for a new lookup.
	expires time.Time
	// lastUsed lets unused names age out of the cache.
	lastUsed time.Time
	// warned is when stale addresses were last reported, zero if never.
	warned time.Time
	// flight is the lookup in progress, nil if none.
	flight *flight

	// next rotates the starting address of each Dial of this name.
	next atomic.Uint64
}

// flight is one lookup shared by every Dial that needs the name while it
// runs. It is cancelled when the last of them gives up, so an abandoned
// lookup never outlives its callers.
type flight struct {
	done    chan struct{} // closed when addrs and err are set
	cancel  context.CancelFunc
	waiters int // guarded by Dialer.mu
	addrs   []netip.Addr
	err     error
}

// resolve returns the addresses of host, from the cache while fresh. The
// entry is returned for its round-robin counter. Errors are a lookupError
// or why ctx ended.
func (d *Dialer) resolve(ctx context.Context, host string) ([]netip.Addr, *entry, error) {
	d.mu.Lock()
	now := d.now()
	e := d.entries[host]
	if e == nil {
		d.sweep(now)
		e = &entry{}
		d.entries[host] = e
	}
	e.lastUsed = now
	if e.addrs != nil && now.Before(e.expires) {
		addrs := e.addrs
		d.mu.Unlock()
		return addrs, e, nil
	}
	f := e.flight
	if f == nil {
		f = d.startLookup(host, e)
	}
	f.waiters++
	stale := e.addrs
	d.mu.Unlock()

	// With stale addresses to fall back on, a resolver that does not answer
	// should not eat the whole connect budget.
	var staleWait <-chan time.Time
	if dl, ok := ctx.Deadline(); ok && stale != nil {
		t := time.NewTimer(time.Until(dl) / 2)
		defer t.Stop()
		staleWait = t.C
	}
	select {
	case <-f.done:
		if f.err == nil {
			return f.addrs, e, nil
		}
		if stale != nil {
			d.warnStale(host, e, f.err)
			return stale, e, nil
		}
		return nil, e, &lookupError{err: f.err}
	case <-staleWait:
		d.leave(host, e, f, true)
		d.warnStale(host, e, errLookupSlow)
		return stale, e, nil
	case <-ctx.Done():
		d.leave(host, e, f, false)
		return nil, e, contextCause(ctx)
	}
}

// errLookupSlow is the reason given for stale addresses when the resolver
// did not answer in time.
var errLookupSlow = errors.New("resolver did not answer within half the connect timeout")

// startLookup begins resolving host for e. d.mu must be held.
func (d *Dialer) startLookup(host string, e *entry) *flight {
	ctx, cancel := context.WithCancel(context.Background())
	f := &flight{done: make(chan struct{}), cancel: cancel}
	e.flight = f
	go func() {
		ips, err := d.resolver.LookupIPAddr(ctx, host)
		cancel()
		addrs := normalize(ips)
		if err == nil && len(addrs) == 0 {
			err = errNoAddresses
		}

		d.mu.Lock()
		now := d.now()
		abandoned := e.flight != f
		if !abandoned {
			e.flight = nil
		}
		switch {
		case err == nil:
			if !slices.Equal(e.addrs, addrs) {
				d.log.Debug("resolved upstream", zap.String("host", host), zap.Stringers("addresses", addrs))
			}
			e.addrs, e.expires = addrs, now.Add(d.ttl)
		case e.addrs != nil && !abandoned:
			// Serve the stale answer for a while before asking again.
			e.expires = now.Add(d.retry)
		}
		f.addrs, f.err = addrs, err
		d.mu.Unlock()
		close(f.done)
	}()
	return f
}

// leave takes a caller that gave up off f, cancelling the lookup when it
// was the last. slow records that the resolver kept a caller with stale
// addresses waiting, so the next Dials use them without waiting again.
func (d *Dialer) leave(host string, e *entry, f *flight, slow bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f.waiters--
	if slow && e.flight == f && e.addrs != nil {
		e.expires = d.now().Add(d.retry)
	}
	if f.waiters == 0 {
		f.cancel()
		// Later callers start a fresh lookup rather than join a cancelled one.
		if e.flight == f {
			e.flight = nil
		}
	}
}

// warnStale reports once per TTL that host is served from stale addresses.
func (d *Dialer) warnStale(host string, e *entry, err error) {
	d.mu.Lock()
	now := d.now()
	if !e.warned.IsZero() && now.Sub(e.warned) < d.ttl {
		d.mu.Unlock()
		return
	}
	e.warned = now
	addrs := e.addrs
	d.mu.Unlock()
	d.log.Warn("resolve upstream failed; using last known addresses",
		zap.String("host", host), zap.Stringers("addresses", addrs), zap.Error(err))
}

// sweep drops names no Dial has used for d.evict, so that hosts removed
// from the configuration do not stay cached forever. It runs only when a
// new name is added, which is rare. d.mu must be held.
func (d *Dialer) sweep(now time.Time) {
	for host, e := range d.entries {
		if e.flight == nil && now.Sub(e.lastUsed) > d.evict {
			delete(d.entries, host)
		}
	}
}

// normalize turns a resolver answer into sorted, unique addresses, with
// IPv4-mapped IPv6 addresses as plain IPv4 so that they count as IPv4 for
// enable_ipv4/enable_ipv6.
func normalize(ips []net.IPAddr) []netip.Addr {
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		a, ok := netip.AddrFromSlice(ip.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if a.Is6() && ip.Zone != "" {
			a = a.WithZone(ip.Zone)
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
