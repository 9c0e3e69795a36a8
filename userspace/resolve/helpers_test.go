package resolve

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

// The builders below make config.Resource values as the loader would, so
// that resolve is tested without YAML. A ref is "namespace/name".

func ptr[T any](v T) *T { return &v }

func port(n int64) config.IntOrString { return config.IntOrString{Value: n, Set: true} }

func splitRef(ref string) (ns, name string) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok {
		return config.DefaultNamespace, ref
	}
	return ns, name
}

func resource(kind, ref string) config.Resource {
	ns, name := splitRef(ref)
	return config.Resource{
		Ref:        config.Ref{Kind: kind, Namespace: ns, Name: name},
		APIVersion: config.APIVersionV3Alpha1,
		Meta:       config.ObjectMeta{Name: name, Namespace: ns},
		Origin:     config.Origin{Source: "file", File: "test.yaml"},
	}
}

func mapping(ref string, spec config.TCPMappingSpec, annotations ...string) config.Resource {
	r := resource(config.KindTCPMapping, ref)
	r.TCPMapping = &spec
	for i := 0; i+1 < len(annotations); i += 2 {
		if r.Meta.Annotations == nil {
			r.Meta.Annotations = map[string]string{}
		}
		r.Meta.Annotations[annotations[i]] = annotations[i+1]
	}
	return r
}

// tcp is the common case: a mapping on a port to a service.
func tcp(ref string, p int64, svc string) config.Resource {
	return mapping(ref, config.TCPMappingSpec{Port: port(p), Service: svc})
}

// sni is a mapping with a host on a port.
func sni(ref string, p int64, host, svc string) config.Resource {
	return mapping(ref, config.TCPMappingSpec{Port: port(p), Host: host, Service: svc})
}

func weighted(r config.Resource, w int) config.Resource {
	spec := *r.TCPMapping
	spec.Weight = ptr(w)
	r.TCPMapping = &spec
	return r
}

func tlsContext(ref string, spec config.TLSContextSpec) config.Resource {
	r := resource(config.KindTLSContext, ref)
	r.TLSContext = &spec
	return r
}

func host(ref string, spec config.HostSpec) config.Resource {
	r := resource(config.KindHost, ref)
	r.Host = &spec
	return r
}

func listener(ref string, spec config.ListenerSpec) config.Resource {
	r := resource(config.KindListener, ref)
	r.Listener = &spec
	return r
}

func module(ref string, cfg config.ModuleConfig) config.Resource {
	r := resource(config.KindModule, ref)
	r.Module = &config.ModuleSpec{Config: cfg}
	return r
}

func secret(ref string, p tlstest.Pair) config.Resource {
	r := resource(config.KindSecret, ref)
	r.APIVersion = "v1"
	r.Secret = &config.SecretData{Type: "kubernetes.io/tls", Cert: p.CertPEM, Key: p.KeyPEM}
	return r
}

func caSecret(ref string, ca *tlstest.CA, key string) config.Resource {
	r := resource(config.KindSecret, ref)
	r.APIVersion = "v1"
	r.Secret = &config.SecretData{Type: "Opaque"}
	if key == "ca.crt" {
		r.Secret.CA = ca.CertPEM
	} else {
		r.Secret.Cert = ca.CertPEM
	}
	return r
}

// summary renders what a snapshot serves, one line per backend:
// "listener/proto[+PROXY] host mapping weight -> upstream[+tls]".
func summary(s snapshot.Snapshot) []string {
	var out []string
	for _, l := range s.Listeners {
		for _, r := range l.Routes {
			h := r.Host
			if h == "" {
				h = "-"
			}
			for _, b := range r.Backends {
				tls := ""
				if b.Origination != nil {
					tls = "+tls"
				}
				proxy := ""
				if l.ProxyProtocol {
					proxy = "+PROXY"
				}
				out = append(out, fmt.Sprintf("%s%s %s %s/%s %d -> %s%s",
					l.String(), proxy, h, b.Mapping.Namespace, b.Mapping.Name, b.Weight, b.Upstream.Address(), tls))
			}
		}
	}
	return out
}

// checkProblems asserts that every problem matches one want, in order: a
// want is a substring of Problem.Error(), prefixed "warning: " for a
// warning.
func checkProblems(t *testing.T, got []config.Problem, want []string) {
	t.Helper()
	var lines []string
	for _, p := range got {
		s := p.Error()
		if p.IsWarning() {
			s = "warning: " + s
		} else if p.Level != "error" {
			t.Errorf("problem %q has level %q, want error or warning", s, p.Level)
		}
		if p.Ref.Kind == "" || p.Origin.File == "" || p.Reason == "" {
			t.Errorf("problem %q lacks Ref, Origin or Reason: %+v", s, p)
		}
		lines = append(lines, s)
	}
	ok := len(lines) == len(want)
	for i := 0; ok && i < len(want); i++ {
		w := want[i]
		isWarn := strings.HasPrefix(w, "warning: ")
		if isWarn != strings.HasPrefix(lines[i], "warning: ") || !strings.Contains(lines[i], strings.TrimPrefix(w, "warning: ")) {
			ok = false
		}
	}
	if !ok {
		t.Errorf("problems:\n  %s\nwant (substrings):\n  %s", strings.Join(lines, "\n  "), strings.Join(want, "\n  "))
	}
}

func checkSummary(t *testing.T, s snapshot.Snapshot, want []string) {
	t.Helper()
	got := summary(s)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("snapshot:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// find returns the listener with key ("*:2222") and the route for host.
func find(t *testing.T, s snapshot.Snapshot, key, host string) (*snapshot.Listener, *snapshot.Route) {
	t.Helper()
	for i := range s.Listeners {
		l := &s.Listeners[i]
		if l.Key() != key {
			continue
		}
		for j := range l.Routes {
			if l.Routes[j].Host == host {
				return l, &l.Routes[j]
			}
		}
	}
	t.Fatalf("no route %s host %q in %v", key, host, summary(s))
	return nil, nil
}

// backend returns the backend of mapping ref ("ns/name") in s.
func backend(t *testing.T, s snapshot.Snapshot, ref string) *snapshot.Backend {
	t.Helper()
	ns, name := splitRef(ref)
	for i := range s.Listeners {
		for j := range s.Listeners[i].Routes {
			r := &s.Listeners[i].Routes[j]
			for k := range r.Backends {
				if m := r.Backends[k].Mapping; m.Namespace == ns && m.Name == name {
					return &r.Backends[k]
				}
			}
		}
	}
	t.Fatalf("no backend %s in %v", ref, summary(s))
	return nil
}

// resolveCase is the shape of the table-driven tests: resources in, the
// served summary and the problems out, and optional further checks.
type resolveCase struct {
	name     string
	opts     Options
	in       []config.Resource
	want     []string
	problems []string
	check    func(t *testing.T, s snapshot.Snapshot)
}

func runCases(t *testing.T, cases []resolveCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			s, probs := Resolve(tt.in, tt.opts)
			checkSummary(t, s, tt.want)
			checkProblems(t, probs, tt.problems)
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}
