package resolve

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// listenerKey is one listening socket: an address ("" for all) and a port.
type listenerKey struct {
	address string
	port    int
}

func (k listenerKey) String() string {
	l := snapshot.Listener{Address: k.address, Port: k.port}
	return l.Key()
}

// building is a listener being assembled.
type building struct {
	key      listenerKey
	resource *portListener // the Listener resource of the port, or nil
	protocol snapshot.Protocol
	setBy    *candidate // the oldest mapping, which chose the protocol without a Listener
	groups   map[string]*group
	hosts    []string // group keys in creation order
}

// group is a canary set: every mapping with the same (address, port, host).
type group struct {
	host    string
	members []*candidate // input order; members[0] sets the shared settings
}

// assemble places the candidates, in input order, on listeners and into
// canary groups, discarding those that conflict with earlier ones.
func (r *resolver) assemble(cands []*candidate) snapshot.Snapshot {
	byKey := map[listenerKey]*building{}
	byPort := map[int][]*building{}
	var order []*building
	for _, c := range cands {
		pl := r.listeners[c.port]
		if pl != nil && !r.fitsListener(c, pl) {
			continue
		}
		key := listenerKey{c.address, c.port}
		b := byKey[key]
		if b == nil {
			if !r.checkAddressConflict(c, byPort[c.port]) {
				continue
			}
			b = &building{key: key, resource: pl, setBy: c, groups: map[string]*group{}}
			switch {
			case pl != nil && pl.tls, pl == nil && c.host != "":
				b.protocol = snapshot.ProtocolTLS
			default:
				b.protocol = snapshot.ProtocolTCP
			}
			byKey[key] = b
			byPort[c.port] = append(byPort[c.port], b)
			order = append(order, b)
		} else if pl == nil && !r.fitsProtocol(c, b) {
			continue
		}
		g := b.groups[c.host]
		if g == nil {
			b.groups[c.host] = &group{host: c.host, members: []*candidate{c}}
			b.hosts = append(b.hosts, c.host)
			continue
		}
		if field, why := disagreement(g.members[0], c); why != "" {
			r.errorf(c.res, field, "cannot join canary group of %s: %s", shortRef(g.members[0].res), why)
			continue
		}
		g.members = append(g.members, c)
	}

	var snap snapshot.Snapshot
	for _, b := range order {
		l := snapshot.Listener{
			Address:       b.key.address,
			Port:          b.key.port,
			Protocol:      b.protocol,
			ProxyProtocol: r.module.proxyProtocol,
		}
		if b.resource != nil {
			ref := b.resource.res.Ref
			l.Source = &ref
			l.ProxyProtocol = l.ProxyProtocol || b.resource.proxy
		}
		for _, h := range b.hosts {
			if route, ok := r.route(b, b.groups[h]); ok {
				l.Routes = append(l.Routes, route)
			}
		}
		if len(l.Routes) == 0 {
			continue
		}
		slices.SortFunc(l.Routes, func(a, b snapshot.Route) int { return compareHosts(a.Host, b.Host) })
		snap.Listeners = append(snap.Listeners, l)
	}
	slices.SortFunc(snap.Listeners, func(a, b snapshot.Listener) int {
		return cmp.Or(compareAddresses(a.Address, b.Address), cmp.Compare(a.Port, b.Port))
	})
	return snap
}

// fitsListener checks a mapping against its port's Listener resource: the
// docs make host and the Listener's TLS agree, and tcpmap serves no HTTP
// or UDP listener.
func (r *resolver) fitsListener(c *candidate, pl *portListener) bool {
	switch {
	case !pl.served:
		kind := "HTTP"
		if !slices.Contains(pl.stack, "HTTP") {
			kind = "UDP"
		}
		r.errorf(c.res, "spec.port", "port %d belongs to %s, an %s listener (protocolStack %v); tcpmap serves only TCP and TLS listeners",
			c.port, shortRef(pl.res), kind, pl.stack)
	case pl.tls && c.host == "":
		r.errorf(c.res, "spec.host", "%s terminates TLS on port %d (protocolStack %v), so a TCPMapping on it needs a host",
			shortRef(pl.res), c.port, pl.stack)
	case !pl.tls && c.host != "":
		r.errorf(c.res, "spec.host", "%s does not terminate TLS on port %d (protocolStack %v), so a TCPMapping on it cannot have a host",
			shortRef(pl.res), c.port, pl.stack)
	default:
		return true
	}
	return false
}

// checkAddressConflict refuses a new listener that Linux would refuse to
// bind: a port open on all addresses excludes the same port on a specific
// address and the other way round (SO_REUSEADDR does not allow this for
// listening sockets on Linux; bind fails with EADDRINUSE). The listener
// claimed first keeps the port.
func (r *resolver) checkAddressConflict(c *candidate, existing []*building) bool {
	field := "spec.port"
	if c.address != "" {
		field = "spec.address"
	}
	for _, b := range existing {
		switch {
		case claimsAll(b.key.address):
			r.errorf(c.res, field, "port %d is already claimed on all addresses by %s; binding it on %s as well would fail with EADDRINUSE",
				c.port, shortRef(b.setBy.res), describeAddress(c.address))
		case claimsAll(c.address):
			r.errorf(c.res, field, "port %d is already claimed on address %s by %s; binding it on %s as well would fail with EADDRINUSE",
				c.port, b.key.address, shortRef(b.setBy.res), describeAddress(c.address))
		default:
			continue
		}
		return false
	}
	return true
}

// claimsAll reports whether a listener address covers every address.
func claimsAll(address string) bool {
	if address == "" {
		return true
	}
	a, err := netip.ParseAddr(address)
	return err == nil && a.IsUnspecified()
}

func describeAddress(address string) string {
	if address == "" {
		return "all addresses"
	}
	return "address " + address
}

// fitsProtocol checks a mapping against a port without a Listener
// resource. Such a port speaks one protocol, the one its oldest mapping
// (first in input order) needs; a later mapping needing the other is
// discarded. Emissary instead produces an invalid Envoy config here
// (issue 4825).
func (r *resolver) fitsProtocol(c *candidate, b *building) bool {
	where := fmt.Sprintf("port %d", c.port)
	if c.address != "" {
		where += " on address " + c.address
	}
	switch {
	case b.protocol == snapshot.ProtocolTLS && c.host == "":
		r.errorf(c.res, "spec.host", "%s terminates TLS, as set by %s (the oldest mapping on it; no Listener decides), so a TCPMapping without host cannot share it",
			where, shortRef(b.setBy.res))
	case b.protocol == snapshot.ProtocolTCP && c.host != "":
		r.errorf(c.res, "spec.host", "%s is a cleartext TCP port, as set by %s (the oldest mapping on it; no Listener decides), so a TCPMapping with host cannot share it",
			where, shortRef(b.setBy.res))
	default:
		return true
	}
	return false
}

// disagreement returns the field and reason why c cannot join the canary
// group led by first, or "" when it can. Values are compared after
// defaults and Module inheritance.
func disagreement(first, c *candidate) (field, why string) {
	mismatch := func(name string, a, b any) string {
		return fmt.Sprintf("mismatched %s: %v != %v", name, a, b)
	}
	switch {
	case first.tls != c.tls:
		return "spec.tls", mismatch("tls", fmt.Sprintf("%q", first.tls), fmt.Sprintf("%q", c.tls))
	case first.idleMs != c.idleMs:
		return "spec.idle_timeout_ms", mismatch("idle_timeout_ms", showMs(first.idleMs), showMs(c.idleMs))
	case first.enableIPv4 != c.enableIPv4:
		return "spec.enable_ipv4", mismatch("enable_ipv4", first.enableIPv4, c.enableIPv4)
	case first.enableIPv6 != c.enableIPv6:
		return "spec.enable_ipv6", mismatch("enable_ipv6", first.enableIPv6, c.enableIPv6)
	case first.breaker != c.breaker:
		return "spec.circuit_breakers", mismatch("circuit_breakers", showBreaker(first.breaker), showBreaker(c.breaker))
	case first.connect != c.connect:
		return annotationField(AnnotationConnectTimeout), mismatch(AnnotationConnectTimeout,
			first.connect.Milliseconds(), c.connect.Milliseconds())
	}
	return "", ""
}

func showMs(ms int64) string {
	if ms == 0 {
		return "unset"
	}
	return fmt.Sprint(ms)
}

func showBreaker(cb snapshot.CircuitBreaker) string {
	return fmt.Sprintf("{max_connections: %d, max_pending_requests: %d}", cb.MaxConnections, cb.MaxPendingRequests)
}

// route builds one canary group's route, or reports why the whole group is
// discarded.
func (r *resolver) route(b *building, g *group) (snapshot.Route, bool) {
	first := g.members[0]
	members := slices.Clone(g.members)
	slices.SortFunc(members, func(a, b *candidate) int { return strings.Compare(refKey(a.res.Ref), refKey(b.res.Ref)) })

	where := b.key.String()
	if g.host != "" {
		where += " host " + g.host
	}
	sum, unweighted := 0, 0
	var list []string
	for _, m := range members {
		if m.weight == nil {
			unweighted++
			list = append(list, shortRef(m.res)+" unset")
			continue
		}
		sum += *m.weight
		list = append(list, fmt.Sprintf("%s %d", shortRef(m.res), *m.weight))
	}
	discard := func(format string, args ...any) (snapshot.Route, bool) {
		for _, m := range members {
			r.errorf(m.res, "spec.weight", format, args...)
		}
		return snapshot.Route{}, false
	}
	switch {
	case sum > 100:
		return discard("the weights of canary group %s total %d, over 100 (%s); the whole group is discarded",
			where, sum, strings.Join(list, ", "))
	case unweighted == 0 && sum == 0:
		return discard("every member of canary group %s has weight 0 (%s); the whole group is discarded",
			where, strings.Join(list, ", "))
	}

	// Mappings without weight share what is left equally; the remainder
	// goes one point each to the first of them in namespace/name order so
	// that the total is exactly 100. When every member has a weight they
	// are kept as written: Route.Pick divides by the total.
	rest, share, extra := 100-sum, 0, 0
	if unweighted > 0 {
		share, extra = rest/unweighted, rest%unweighted
	}
	route := snapshot.Route{
		Host:           g.host,
		Termination:    first.termination,
		IdleTimeout:    time.Duration(first.idleMs) * time.Millisecond,
		ConnectTimeout: first.connect,
		CircuitBreaker: first.breaker,
	}
	for _, m := range members {
		be := m.backend
		if m.weight != nil {
			be.Weight = *m.weight
		} else {
			be.Weight = share
			if extra > 0 {
				be.Weight++
				extra--
			}
			if be.Weight == 0 {
				r.warnf(m.res, "spec.weight", "gets no traffic: the weights of the other members of canary group %s already total 100", where)
			}
		}
		route.Backends = append(route.Backends, be)
	}
	return route, true
}

// compareHosts orders SNI patterns most specific first: exact names, then
// wildcards by decreasing length of their fixed part, then "*".
func compareHosts(a, b string) int {
	rank := func(h string) (int, int) {
		switch {
		case h == "*":
			return 2, 0
		case strings.Contains(h, "*"):
			return 1, -len(strings.Trim(h, "*"))
		}
		return 0, -len(h)
	}
	ra, la := rank(a)
	rb, lb := rank(b)
	return cmp.Or(cmp.Compare(ra, rb), cmp.Compare(la, lb), strings.Compare(a, b))
}

// compareAddresses puts "all addresses" first, then IP literals in
// numeric order.
func compareAddresses(a, b string) int {
	if a == "" || b == "" {
		return cmp.Compare(a, b)
	}
	pa, ea := netip.ParseAddr(a)
	pb, eb := netip.ParseAddr(b)
	if ea != nil || eb != nil {
		return cmp.Compare(a, b)
	}
	return pa.Compare(pb)
}
