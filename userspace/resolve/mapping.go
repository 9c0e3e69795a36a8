package resolve

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// candidate is a TCPMapping that passed every check of its own; whether it
// is served still depends on the others on its port.
type candidate struct {
	res     *config.Resource
	address string // canonical IP literal, "" for all addresses
	port    int
	host    string // lower case SNI pattern, "" for no TLS termination

	backend     snapshot.Backend
	weight      *int
	termination *snapshot.TLSServer

	// What canary members must agree on, in effective form.
	tls        string // the `tls` field as written
	idleMs     int64
	enableIPv4 bool
	enableIPv6 bool
	breaker    snapshot.CircuitBreaker
	connect    time.Duration
	connectSet bool // connect timeout from the annotation
}

// candidate checks one TCPMapping on its own and reports every problem it
// has; nil means discarded.
func (r *resolver) candidate(m *config.Resource) *candidate {
	spec := m.TCPMapping
	c := &candidate{res: m, backend: snapshot.Backend{Mapping: m.Ref}}
	bad := false
	fail := func(field, format string, args ...any) {
		r.errorf(m, field, format, args...)
		bad = true
	}

	switch {
	case !spec.Port.Set:
		fail("spec.port", "port is required")
	case spec.Port.Value < 1 || spec.Port.Value > 65535:
		fail("spec.port", "port must be 1..65535, got %d", spec.Port.Value)
	default:
		c.port = int(spec.Port.Value)
	}
	if spec.Address != "" {
		a, err := parseAddress(spec.Address)
		if err != nil {
			fail("spec.address", "%v", err)
		}
		c.address = a
	}
	if spec.Host != "" {
		h, err := normalizeHost(spec.Host)
		if err != nil {
			fail("spec.host", "%v", err)
		}
		c.host = h
	}
	if w := spec.Weight; w != nil {
		if *w < 0 || *w > 100 {
			fail("spec.weight", "weight must be 0..100 (a percentage), got %d", *w)
		}
		c.weight = w
	}
	if spec.IdleTimeoutMs.Set {
		if spec.IdleTimeoutMs.Value < 0 {
			fail("spec.idle_timeout_ms", "idle_timeout_ms must not be negative, got %d", spec.IdleTimeoutMs.Value)
		}
		c.idleMs = spec.IdleTimeoutMs.Value
	}
	if spec.TLS != nil {
		c.tls = tlsString(spec.TLS)
	}

	c.enableIPv4, c.enableIPv6 = r.module.enableIPv4, r.module.enableIPv6
	if spec.EnableIPv4 != nil {
		c.enableIPv4 = *spec.EnableIPv4
	}
	if spec.EnableIPv6 != nil {
		c.enableIPv6 = *spec.EnableIPv6
	}

	c.breaker = defaultBreaker()
	if r.module.breaker != nil {
		c.breaker = *r.module.breaker
	}
	if cb, err := pickBreaker(spec.CircuitBreakers); err != nil {
		fail("spec.circuit_breakers", "%v", err)
	} else if cb != nil {
		c.breaker = *cb
	}

	c.connect = r.opts.DefaultConnectTimeout
	if v, ok := m.Meta.Annotations[AnnotationConnectTimeout]; ok {
		ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || ms < 1 {
			fail(annotationField(AnnotationConnectTimeout), "want a positive number of milliseconds, got %q", v)
		}
		c.connect, c.connectSet = time.Duration(ms)*time.Millisecond, true
	}
	if v, ok := m.Meta.Annotations[AnnotationSendProxyProtocol]; ok {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "v1", "1":
			c.backend.SendProxyProtocol = 1
		case "v2", "2":
			c.backend.SendProxyProtocol = 2
		case "", "none", "off":
		default:
			fail(annotationField(AnnotationSendProxyProtocol), "want v1 or v2, got %q", v)
		}
	}

	r.checkResolver(m, "spec.resolver", spec.Resolver)

	svc, err := parseService(spec.Service)
	if err != nil {
		fail("spec.service", "%v", err)
		return nil
	}
	host := expandHost(svc.host, r.opts.ClusterDomain, r.opts.AmbassadorNamespace)
	if !c.enableIPv4 && !c.enableIPv6 && !isIPLiteral(host) {
		fail("spec.enable_ipv4", "enable_ipv4 and enable_ipv6 are both false, so service host %s cannot be resolved", host)
	}
	orig, err := r.origination(m, svc, host)
	if err != nil {
		fail("spec.tls", "%v", err)
	}
	port := svc.port
	if port == 0 {
		// The docs: 443 when originating TLS, even if the service says
		// http://, else 80.
		port = 80
		if orig != nil {
			port = 443
		}
	}
	c.backend.Origination = orig
	// With both families enabled the docs prefer IPv6; that preference is
	// applied where the name is resolved, from these two flags.
	c.backend.Upstream = snapshot.Upstream{
		Service: spec.Service, Host: host, Port: port,
		EnableIPv4: c.enableIPv4, EnableIPv6: c.enableIPv6,
	}

	if c.host != "" && !bad {
		if c.termination, err = r.termination(c.host); err != nil {
			fail("spec.host", "%v", err)
		}
	}
	if bad {
		return nil
	}
	return c
}

func annotationField(name string) string {
	return fmt.Sprintf("metadata.annotations[%q]", name)
}

// tlsString is the `tls` field as a user would write it.
func tlsString(t *config.TLSRef) string {
	switch {
	case t.Context != "":
		return t.Context
	case t.Originate:
		return "true"
	}
	return ""
}

// normalizeHost checks a TCPMapping host, an SNI pattern: a DNS name,
// optionally with one "*" as its first or last character, or "*". It
// returns the pattern in lower case without a trailing dot.
func normalizeHost(h string) (string, error) {
	out := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(h), "."))
	if out == "" {
		return "", fmt.Errorf("host %q is empty", h)
	}
	if n := strings.Count(out, "*"); n > 1 || (n == 1 && !strings.HasPrefix(out, "*") && !strings.HasSuffix(out, "*")) {
		return "", fmt.Errorf("host %q may hold one \"*\", as its first or last character", h)
	}
	if core := strings.Trim(strings.Trim(out, "*"), "."); core != "" {
		if err := checkHostname(core); err != nil {
			return "", err
		}
	}
	return out, nil
}
