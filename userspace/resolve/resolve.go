// Package resolve turns loaded Emissary resources into the snapshot that
// the datapaths serve: which (address, port) pairs to listen on, how each
// speaks to clients, and where each connection goes.
//
// It follows the Emissary TCPMapping reference docs and, where Emissary's
// own code falls short of them (see the shared emissary-behaviour notes),
// does better: a resource that cannot be served exactly as written is
// discarded with an error Problem naming it, the field and the reason, and
// everything else is served. Resolution is a pure function of its input:
// the same resources in the same order give the same snapshot and problems.
package resolve

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// Annotations on a TCPMapping that tune what Emissary cannot express.
const (
	// AnnotationConnectTimeout is the upstream connect timeout in
	// milliseconds (Emissary fixes it at 3 s, issue 5695).
	AnnotationConnectTimeout = "tcpmap.io/connect-timeout-ms"
	// AnnotationSendProxyProtocol makes tcpmap send a PROXY header, "v1"
	// or "v2", to the upstream.
	AnnotationSendProxyProtocol = "tcpmap.io/send-proxy-protocol"
)

// Options are the installation-wide settings resolution depends on.
type Options struct {
	// AmbassadorID selects resources by ambassador_id; "" means "default".
	AmbassadorID string
	// ClusterDomain, when set, turns the Kubernetes short service names
	// "name" and "name.namespace" into "name.<ns>.svc.<ClusterDomain>",
	// as Emissary's default resolver does. Empty means the service host
	// is resolved with plain DNS exactly as written.
	ClusterDomain string
	// AmbassadorNamespace is where a bare service name lives
	// (AMBASSADOR_NAMESPACE); "" means "default".
	AmbassadorNamespace string
	// DefaultConnectTimeout bounds upstream dials unless a mapping's
	// AnnotationConnectTimeout says otherwise; 0 means
	// snapshot.DefaultConnectTimeout.
	DefaultConnectTimeout time.Duration
	// ReadFile reads the files named by TLSContext cert_chain_file,
	// private_key_file and cacert_chain_file; nil means os.ReadFile.
	ReadFile func(name string) ([]byte, error)
}

func (o Options) withDefaults() Options {
	if o.AmbassadorID == "" {
		o.AmbassadorID = "default"
	}
	if o.AmbassadorNamespace == "" {
		o.AmbassadorNamespace = config.DefaultNamespace
	}
	if o.DefaultConnectTimeout <= 0 {
		o.DefaultConnectTimeout = snapshot.DefaultConnectTimeout
	}
	if o.ReadFile == nil {
		o.ReadFile = os.ReadFile
	}
	return o
}

// Resolve builds the snapshot from rs, in input order (order decides which
// of two conflicting resources wins: the earlier one). Resources whose
// ambassador_id does not include opts.AmbassadorID are ignored silently.
// Every discarded resource yields an error Problem; warnings leave the
// resource in service.
func Resolve(rs []config.Resource, opts Options) (snapshot.Snapshot, []config.Problem) {
	r := newResolver(rs, opts.withDefaults())
	r.indexModule()
	r.indexListeners()
	r.indexHosts()
	var cands []*candidate
	for _, m := range r.mappings {
		if c := r.candidate(m); c != nil {
			cands = append(cands, c)
		}
	}
	return r.assemble(cands), r.problems
}

// resolver holds the indexed resources and the problems found so far.
type resolver struct {
	opts     Options
	problems []config.Problem
	reported map[string]bool // warnings already reported, to report each once

	mappings  []*config.Resource
	modules   []*config.Resource
	listenRes []*config.Resource
	hostRes   []*config.Resource

	contexts       map[string]*config.Resource   // "ns/name"
	contextsByName map[string][]*config.Resource // name, sorted by namespace
	secrets        map[string]*config.Resource   // "ns/name"

	module    moduleDefaults
	listeners map[int]*portListener // Listener resources by port
	hosts     []*config.Resource    // usable Hosts, sorted by hostname then ns/name
}

func newResolver(rs []config.Resource, opts Options) *resolver {
	r := &resolver{
		opts:           opts,
		reported:       map[string]bool{},
		contexts:       map[string]*config.Resource{},
		contextsByName: map[string][]*config.Resource{},
		secrets:        map[string]*config.Resource{},
		listeners:      map[int]*portListener{},
	}
	for i := range rs {
		res := &rs[i]
		if id, ok := res.AmbassadorID(); ok && !id.Matches(opts.AmbassadorID) {
			continue
		}
		switch {
		case res.TCPMapping != nil:
			r.mappings = append(r.mappings, res)
		case res.TLSContext != nil:
			key := refKey(res.Ref)
			if _, dup := r.contexts[key]; dup {
				r.errorf(res, "metadata.name", "duplicate TLSContext %s; the first one is used", key)
				continue
			}
			r.contexts[key] = res
			r.contextsByName[res.Ref.Name] = append(r.contextsByName[res.Ref.Name], res)
		case res.Host != nil:
			r.hostRes = append(r.hostRes, res)
		case res.Listener != nil:
			r.listenRes = append(r.listenRes, res)
		case res.Module != nil:
			r.modules = append(r.modules, res)
		case res.Secret != nil:
			key := refKey(res.Ref)
			if _, dup := r.secrets[key]; dup {
				r.errorf(res, "metadata.name", "duplicate Secret %s; the first one is used", key)
				continue
			}
			r.secrets[key] = res
		}
	}
	for _, list := range r.contextsByName {
		slices.SortFunc(list, func(a, b *config.Resource) int { return cmp.Compare(a.Ref.Namespace, b.Ref.Namespace) })
	}
	return r
}

func refKey(ref config.Ref) string { return ref.NamespacedName() }

// shortRef is "Kind ns/name", the form messages use to name a resource.
func shortRef(res *config.Resource) string { return res.Ref.String() }

func (r *resolver) errorf(res *config.Resource, field, format string, args ...any) {
	r.problems = append(r.problems, config.Problem{
		Ref: res.Ref, Origin: res.Origin, Field: field, Reason: fmt.Sprintf(format, args...), Level: "error",
	})
}

// warnf reports a warning once: several mappings may share the resource
// the warning is about.
func (r *resolver) warnf(res *config.Resource, field, format string, args ...any) {
	p := config.Problem{Ref: res.Ref, Origin: res.Origin, Field: field, Reason: fmt.Sprintf(format, args...), Level: "warning"}
	if key := p.Error(); !r.reported[key] {
		r.reported[key] = true
		r.problems = append(r.problems, p)
	}
}

// moduleDefaults are what the `ambassador` Module sets for every mapping.
type moduleDefaults struct {
	// enableIPv6 defaults to false: Emissary's Module documents
	// enable_ipv6 as false by default, and the TCPMapping docs' "default is
	// true unless set otherwise by the ambassador Module" defers to the
	// Module. IPv4 defaults to true in both.
	enableIPv4, enableIPv6 bool
	breaker                *snapshot.CircuitBreaker // nil: Envoy's defaults
	proxyProtocol          bool
}

// indexModule applies the `ambassador` Module. Emissary reads one per
// installation; a second is an error and ignored.
func (r *resolver) indexModule() {
	r.module = moduleDefaults{enableIPv4: true}
	var first *config.Resource
	for _, m := range r.modules {
		if m.Ref.Name != "ambassador" {
			r.warnf(m, "metadata.name", "only the Module named ambassador configures tcpmap; this Module is ignored")
			continue
		}
		if first != nil {
			r.errorf(m, "metadata.name", "only one ambassador Module is allowed per installation; %s is in effect", shortRef(first))
			continue
		}
		first = m
		cfg := m.Module.Config
		if cfg.EnableIPv4 != nil {
			r.module.enableIPv4 = *cfg.EnableIPv4
		}
		if cfg.EnableIPv6 != nil {
			r.module.enableIPv6 = *cfg.EnableIPv6
		}
		// Emissary ignores use_proxy_proto on TCP listeners although its
		// AWS guide tells users to set it; tcpmap honours it everywhere.
		r.module.proxyProtocol = cfg.UseProxyProto != nil && *cfg.UseProxyProto
		if len(cfg.CircuitBreakers) > 0 {
			cb, err := pickBreaker(cfg.CircuitBreakers)
			if err != nil {
				r.errorf(m, "config.circuit_breakers", "%v; Envoy's defaults apply instead", err)
			} else {
				r.module.breaker = cb
			}
		}
		r.checkResolver(m, "config.resolver", cfg.Resolver)
	}
}

// checkResolver warns about a resolver tcpmap does not have. tcpmap
// resolves every service with DNS, which is what Emissary's default
// KubernetesServiceResolver ("kubernetes-service") amounts to.
func (r *resolver) checkResolver(res *config.Resource, field, name string) {
	if name == "" || name == "kubernetes-service" {
		return
	}
	r.warnf(res, field, "tcpmap has no resolver %q (it supports no resolver resources); the service is resolved with DNS", name)
}

// pickBreaker returns the first circuit breaker of default priority, or
// nil when the list has none.
func pickBreaker(list []config.CircuitBreaker) (*snapshot.CircuitBreaker, error) {
	for i, cb := range list {
		p := strings.ToLower(cb.Priority)
		if p != "" && p != "default" {
			continue
		}
		out := snapshot.CircuitBreaker{
			Priority:           "default",
			MaxConnections:     snapshot.DefaultMaxConnections,
			MaxPendingRequests: snapshot.DefaultMaxPendingRequests,
		}
		if cb.MaxConnections != nil {
			if *cb.MaxConnections < 1 {
				return nil, fmt.Errorf("[%d].max_connections must be at least 1, got %d", i, *cb.MaxConnections)
			}
			out.MaxConnections = *cb.MaxConnections
		}
		if cb.MaxPendingRequests != nil {
			if *cb.MaxPendingRequests < 0 {
				return nil, fmt.Errorf("[%d].max_pending_requests must not be negative, got %d", i, *cb.MaxPendingRequests)
			}
			out.MaxPendingRequests = *cb.MaxPendingRequests
		}
		return &out, nil
	}
	return nil, nil
}

// defaultBreaker is Envoy's, which applies when Emissary sets none.
func defaultBreaker() snapshot.CircuitBreaker {
	return snapshot.CircuitBreaker{
		Priority:           "default",
		MaxConnections:     snapshot.DefaultMaxConnections,
		MaxPendingRequests: snapshot.DefaultMaxPendingRequests,
	}
}

// portListener is what a Listener resource says about its port.
type portListener struct {
	res   *config.Resource
	stack []string
	tls   bool
	proxy bool
	// served is false for HTTP and UDP listeners, which are Emissary's
	// business and not tcpmap's.
	served bool
}

// protocolStacks expands Listener.spec.protocol as Emissary does.
var protocolStacks = map[string][]string{
	"HTTP":       {"HTTP", "TCP"},
	"HTTPS":      {"TLS", "HTTP", "TCP"},
	"HTTPPROXY":  {"PROXY", "HTTP", "TCP"},
	"HTTPSPROXY": {"PROXY", "TLS", "HTTP", "TCP"},
	"TCP":        {"TCP"},
	"TLS":        {"TLS", "TCP"},
}

// indexListeners reads Listener resources. A Listener has no address: it
// configures its port on every address.
func (r *resolver) indexListeners() {
	for _, l := range r.listenRes {
		spec := l.Listener
		if !spec.Port.Set || spec.Port.Value < 1 || spec.Port.Value > 65535 {
			r.errorf(l, "spec.port", "port must be 1..65535, got %s", showInt(spec.Port))
			continue
		}
		port := int(spec.Port.Value)
		var stack []string
		switch {
		case len(spec.ProtocolStack) > 0:
			for _, s := range spec.ProtocolStack {
				stack = append(stack, strings.ToUpper(s))
			}
			if spec.Protocol != "" && !slices.Equal(stack, protocolStacks[strings.ToUpper(spec.Protocol)]) {
				r.warnf(l, "spec.protocol", "protocol %s is ignored: protocolStack %v is set", spec.Protocol, stack)
			}
		case spec.Protocol != "":
			var ok bool
			if stack, ok = protocolStacks[strings.ToUpper(spec.Protocol)]; !ok {
				r.errorf(l, "spec.protocol", "unknown protocol %q (want HTTP, HTTPS, HTTPPROXY, HTTPSPROXY, TCP or TLS)", spec.Protocol)
				continue
			}
		default:
			r.errorf(l, "spec.protocolStack", "neither protocol nor protocolStack is set")
			continue
		}
		pl := &portListener{res: l, stack: stack, served: true}
		bad := false
		for _, s := range stack {
			switch s {
			case "TLS":
				pl.tls = true
			case "PROXY":
				pl.proxy = true
			case "HTTP", "UDP":
				pl.served = false
			case "TCP":
			default:
				r.errorf(l, "spec.protocolStack", "unknown protocol %q in the stack (want HTTP, PROXY, TLS, TCP or UDP)", s)
				bad = true
			}
		}
		if bad {
			continue
		}
		if prev := r.listeners[port]; prev != nil {
			r.errorf(l, "spec.port", "port %d is already configured by %s", port, shortRef(prev.res))
			continue
		}
		r.listeners[port] = pl
	}
}

// indexHosts keeps the Hosts that can supply a certificate, sorted by
// hostname and then namespace/name: the first one whose hostname matches a
// TCPMapping's host terminates its TLS, as in Emissary. (Plain string
// order puts "*" before any name, so a catch-all Host with a certificate
// wins over more specific ones, exactly as Emissary behaves.)
func (r *resolver) indexHosts() {
	for _, h := range r.hostRes {
		spec := h.Host
		if spec.TLSContext != nil && spec.TLS != nil {
			r.errorf(h, "spec.tls", "tlsContext and tls cannot both be set")
			continue
		}
		if spec.TLSSecret == nil && spec.TLSContext == nil {
			continue // no certificate: an HTTP-only Host as far as TCP goes
		}
		r.hosts = append(r.hosts, h)
	}
	slices.SortStableFunc(r.hosts, func(a, b *config.Resource) int {
		return cmp.Or(
			cmp.Compare(hostname(a), hostname(b)),
			cmp.Compare(a.Ref.Namespace, b.Ref.Namespace),
			cmp.Compare(a.Ref.Name, b.Ref.Name),
		)
	})
}

// hostname is a Host's hostname glob, "*" by default.
func hostname(h *config.Resource) string {
	if h.Host.Hostname == "" {
		return "*"
	}
	return strings.ToLower(h.Host.Hostname)
}

func showInt(v config.IntOrString) string {
	if !v.Set {
		return "unset"
	}
	return fmt.Sprint(v.Value)
}

// parseAddress validates a TCPMapping address: an IP literal, returned in
// canonical form.
func parseAddress(s string) (string, error) {
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("address must be an IP literal, got %q", s)
	}
	return a.Unmap().String(), nil
}
