package relay

import (
	"crypto/tls"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// table is everything a new connection needs, built once per NewServer or
// Update and swapped atomically: a connection loads it at accept time and
// keeps it to the end, so an Update never changes a live connection.
type table struct {
	listener snapshot.Listener // private copy; routes[i].route points into it
	routes   []routeState
	mappings map[config.Ref]*mappingCounters
	// breakers by route host; they carry over Update like mappings.
	breakers map[string]*breaker
}

type routeState struct {
	route    *snapshot.Route
	tls      *tls.Config // termination; nil on TCP listeners
	backends []backendState
	limits   limits
	breaker  *breaker
}

type backendState struct {
	backend   *snapshot.Backend
	clientTLS *tls.Config // origination; nil for cleartext
	counters  *mappingCounters
}

// buildTable validates l and builds its TLS configs. Counters of mappings
// and breakers of route hosts present in prev carry over.
func buildTable(l snapshot.Listener, opts *Options, prev *table, log *zap.Logger) (*table, error) {
	// Copy the slices so a caller that reuses its snapshot cannot change
	// routes under live connections.
	l.Routes = slices.Clone(l.Routes)
	for i := range l.Routes {
		l.Routes[i].Backends = slices.Clone(l.Routes[i].Backends)
	}
	t := &table{
		listener: l,
		routes:   make([]routeState, len(l.Routes)),
		mappings: make(map[config.Ref]*mappingCounters),
		breakers: make(map[string]*breaker),
	}
	switch l.Protocol {
	case snapshot.ProtocolTCP:
		if len(l.Routes) != 1 {
			return nil, fmt.Errorf("listener %s: a TCP listener needs exactly one route, has %d", l.Key(), len(l.Routes))
		}
	case snapshot.ProtocolTLS:
		if opts.ServerTLS == nil {
			return nil, fmt.Errorf("listener %s: relay options: ServerTLS is required for a TLS listener", l.Key())
		}
	default:
		return nil, fmt.Errorf("listener %s: protocol %q is not TCP or TLS", l.Key(), l.Protocol)
	}
	var unverified []config.Ref
	for i := range l.Routes {
		r := &l.Routes[i]
		rs := &t.routes[i]
		rs.route = r
		rs.limits = effectiveLimits(r.CircuitBreaker)
		rs.breaker = t.breaker(r.Host, prev)
		if l.Protocol == snapshot.ProtocolTLS {
			if r.Termination == nil {
				return nil, fmt.Errorf("listener %s: route %q: no TLS termination on a TLS listener", l.Key(), r.Host)
			}
			cfg, err := opts.ServerTLS(r.Termination)
			if err != nil {
				return nil, fmt.Errorf("listener %s: route %q (%s): server TLS: %w", l.Key(), r.Host, r.Termination.Source, err)
			}
			rs.tls = cfg
		}
		rs.backends = make([]backendState, len(r.Backends))
		for j := range r.Backends {
			b := &r.Backends[j]
			bs := &rs.backends[j]
			bs.backend = b
			if b.SendProxyProtocol < 0 || b.SendProxyProtocol > 2 {
				return nil, fmt.Errorf("listener %s: %s: send-proxy-protocol %d: want 0 (none), 1 or 2", l.Key(), b.Mapping, b.SendProxyProtocol)
			}
			if b.Origination != nil {
				if opts.ClientTLS == nil {
					return nil, fmt.Errorf("listener %s: %s: relay options: ClientTLS is required for TLS origination", l.Key(), b.Mapping)
				}
				cfg, err := opts.ClientTLS(b.Origination)
				if err != nil {
					return nil, fmt.Errorf("listener %s: %s: upstream TLS: %w", l.Key(), b.Mapping, err)
				}
				bs.clientTLS = cfg
				if len(b.Origination.RootCAPEM) == 0 {
					unverified = append(unverified, b.Mapping)
				}
			}
			bs.counters = t.counters(b.Mapping, prev)
		}
	}
	// Warn only once the table is known good, so a rejected Update does
	// not use up the one warning.
	for _, ref := range unverified {
		if t.mappings[ref].warnedUnverified.CompareAndSwap(false, true) {
			log.Warn("upstream certificate not verified: set ca_secret on the TLSContext",
				zap.Stringer("mapping", ref))
		}
	}
	return t, nil
}

func (t *table) counters(ref config.Ref, prev *table) *mappingCounters {
	if c, ok := t.mappings[ref]; ok {
		return c
	}
	var c *mappingCounters
	if prev != nil {
		c = prev.mappings[ref]
	}
	if c == nil {
		c = new(mappingCounters)
	}
	t.mappings[ref] = c
	return c
}

// breaker returns the breaker of the route with host, the one of prev's
// table when it had that host.
func (t *table) breaker(host string, prev *table) *breaker {
	if b, ok := t.breakers[host]; ok {
		return b
	}
	var b *breaker
	if prev != nil {
		b = prev.breakers[host]
	}
	if b == nil {
		b = new(breaker)
	}
	t.breakers[host] = b
	return b
}

// routeForSNI maps a server name to its route state, nil for none.
func (t *table) routeForSNI(name string) *routeState {
	r := t.listener.RouteForSNI(name)
	if r == nil {
		return nil
	}
	for i := range t.routes {
		if t.routes[i].route == r {
			return &t.routes[i]
		}
	}
	return nil
}

// pick chooses a backend by weight; rand returns a value in [0, n).
func (rs *routeState) pick(rand func(int) int) *backendState {
	if len(rs.backends) == 0 {
		return nil
	}
	x := 0
	if total := rs.route.TotalWeight(); total > 0 {
		x = rand(total)
	}
	b := rs.route.Pick(x)
	for i := range rs.backends {
		if rs.backends[i].backend == b {
			return &rs.backends[i]
		}
	}
	return nil
}
