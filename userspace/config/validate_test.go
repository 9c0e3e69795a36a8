package config

import (
	"fmt"
	"strings"
	"testing"
)

// res is a v3alpha1 resource named x with the given spec lines (indented
// two spaces).
func res(kind, spec string) string {
	return fmt.Sprintf("apiVersion: getambassador.io/v3alpha1\nkind: %s\nmetadata:\n  name: x\nspec:\n%s", kind, spec)
}

// withMeta is res with extra metadata lines (indented two spaces).
func withMeta(kind, meta, spec string) string {
	return strings.Replace(res(kind, spec), "  name: x\n", "  name: x\n"+meta, 1)
}

const okTCP = "  port: 2222\n  service: upstream:22\n"

// TestRejects: each rule, broken once. The problem names the exact field,
// gives the reason, and the resource is left out whole.
func TestRejects(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		field  string
		reason string
	}{
		// TCPMapping
		{"port missing", res(KindTCPMapping, "  service: up:22\n"), "spec.port", "required"},
		{"port zero", res(KindTCPMapping, "  port: 0\n  service: up:22\n"), "spec.port", "between 1 and 65535, got 0"},
		{"port too big", res(KindTCPMapping, "  port: 70000\n  service: up:22\n"), "spec.port", "between 1 and 65535, got 70000"},
		{"port not a number", res(KindTCPMapping, "  port: ssh\n  service: up:22\n"), "spec.port", "must be an integer"},
		{"port float", res(KindTCPMapping, "  port: 22.5\n  service: up:22\n"), "spec.port", "must be an integer"},
		{"service missing", res(KindTCPMapping, "  port: 2222\n"), "spec.service", "required"},
		{"service empty", res(KindTCPMapping, "  port: 2222\n  service: \"\"\n"), "spec.service", "required"},
		{"service with space", res(KindTCPMapping, "  port: 2222\n  service: up 22\n"), "spec.service", "white space"},
		{"service not a string", res(KindTCPMapping, "  port: 2222\n  service: 22\n"), "spec.service", "must be a string, got number 22"},
		{"weight over 100", res(KindTCPMapping, okTCP+"  weight: 101\n"), "spec.weight", "between 0 and 100, got 101"},
		{"weight negative", res(KindTCPMapping, okTCP+"  weight: -1\n"), "spec.weight", "between 0 and 100, got -1"},
		{"idle timeout negative", res(KindTCPMapping, okTCP+"  idle_timeout_ms: -5\n"), "spec.idle_timeout_ms", "must not be negative"},
		{"idle timeout text", res(KindTCPMapping, okTCP+"  idle_timeout_ms: 5m\n"), "spec.idle_timeout_ms", "must be an integer"},
		{"address not IP", res(KindTCPMapping, okTCP+"  address: localhost\n"), "spec.address", "must be an IP address"},
		{"address CIDR", res(KindTCPMapping, okTCP+"  address: 10.0.0.0/8\n"), "spec.address", "must be an IP address"},
		{"breaker priority", res(KindTCPMapping, okTCP+"  circuit_breakers:\n  - priority: urgent\n"), "spec.circuit_breakers[0].priority", "must be default or high"},
		{"breaker negative", res(KindTCPMapping, okTCP+"  circuit_breakers:\n  - priority: high\n  - max_connections: -1\n"), "spec.circuit_breakers[1].max_connections", "must not be negative"},
		{"breaker unknown field", res(KindTCPMapping, okTCP+"  circuit_breakers:\n  - max_conns: 1\n"), "spec.circuit_breakers[0].max_conns", "unknown field"},
		{"breakers not a list", res(KindTCPMapping, okTCP+"  circuit_breakers: {max_connections: 1}\n"), "spec.circuit_breakers", "must be a list"},
		{"host glob in middle", res(KindTCPMapping, okTCP+"  host: foo.*.com\n"), "spec.host", "glob"},
		{"host partial glob", res(KindTCPMapping, okTCP+"  host: \"*foo.com\"\n"), "spec.host", "glob"},
		{"host bad character", res(KindTCPMapping, okTCP+"  host: exa mple.com\n"), "spec.host", "character"},
		{"host empty label", res(KindTCPMapping, okTCP+"  host: example..com\n"), "spec.host", "empty label"},
		{"host leading hyphen", res(KindTCPMapping, okTCP+"  host: -example.com\n"), "spec.host", "starts or ends with '-'"},
		{"v3alpha1 boolean tls", res(KindTCPMapping, okTCP+"  tls: true\n"), "spec.tls", "boolean tls exists only in getambassador.io/v2"},
		{"tls number", res(KindTCPMapping, okTCP+"  tls: 5\n"), "spec.tls", "must be a TLSContext name or a boolean"},
		{"unknown spec field", res(KindTCPMapping, okTCP+"  foo: bar\n"), "spec.foo", "unknown field"},
		{"field case matters", res(KindTCPMapping, "  Port: 2222\n  service: up:22\n"), "spec.Port", "unknown field"},
		{"duplicate field", res(KindTCPMapping, okTCP+"  port: 2223\n"), "spec.port", "duplicate field (line 8 repeats line 6)"},
		{"unknown top-level field", res(KindTCPMapping, okTCP) + "extra: 1\n", "extra", "unknown field"},
		{"spec not an object", res(KindTCPMapping, "") + "  - 1\n", "spec", "must be an object"},
		{"ambassador_id bad", res(KindTCPMapping, okTCP+"  ambassador_id: {a: 1}\n"), "spec.ambassador_id", "string or a list of strings"},
		{"enable_ipv4 yes", res(KindTCPMapping, okTCP+"  enable_ipv4: yes\n"), "spec.enable_ipv4", "must be true or false"},
		{"connect timeout zero", withMeta(KindTCPMapping, "  annotations:\n    tcpmap.io/connect-timeout-ms: \"0\"\n", okTCP),
			`metadata.annotations["tcpmap.io/connect-timeout-ms"]`, "positive whole number"},
		{"connect timeout text", withMeta(KindTCPMapping, "  annotations:\n    tcpmap.io/connect-timeout-ms: 5s\n", okTCP),
			`metadata.annotations["tcpmap.io/connect-timeout-ms"]`, "positive whole number"},
		{"connect timeout unquoted", withMeta(KindTCPMapping, "  annotations:\n    tcpmap.io/connect-timeout-ms: 5000\n", okTCP),
			`metadata.annotations["tcpmap.io/connect-timeout-ms"]`, `must be a string, got number 5000 (quote it: "5000")`},
		{"send proxy v3", withMeta(KindTCPMapping, "  annotations:\n    tcpmap.io/send-proxy-protocol: v3\n", okTCP),
			`metadata.annotations["tcpmap.io/send-proxy-protocol"]`, `must be "v1" or "v2"`},
		{"unknown tcpmap annotation", withMeta(KindTCPMapping, "  annotations:\n    tcpmap.io/conect-timeout-ms: \"5\"\n", okTCP),
			`metadata.annotations["tcpmap.io/conect-timeout-ms"]`, "unknown tcpmap annotation"},
		{"annotation on wrong kind", withMeta(KindTLSContext, "  annotations:\n    tcpmap.io/send-proxy-protocol: v1\n", "  sni: a\n"),
			`metadata.annotations["tcpmap.io/send-proxy-protocol"]`, "applies only to TCPMapping"},
		{"name missing", strings.Replace(res(KindTCPMapping, okTCP), "  name: x\n", "  namespace: ns\n", 1), "metadata.name", "required"},
		{"name invalid", strings.Replace(res(KindTCPMapping, okTCP), "name: x", "name: My_Mapping", 1), "metadata.name", "not a valid name"},
		{"namespace invalid", withMeta(KindTCPMapping, "  namespace: a.b\n", okTCP), "metadata.namespace", "not a valid namespace"},
		{"metadata unknown", withMeta(KindTCPMapping, "  nmae: y\n", okTCP), "metadata.nmae", "unknown field"},
		{"old apiVersion", strings.Replace(res(KindTCPMapping, okTCP), "v3alpha1", "v1", 1), "apiVersion", "getambassador.io/v1 is not supported for TCPMapping"},
		{"v2 Listener", strings.Replace(res(KindListener, "  port: 1\n  protocol: TCP\n"), "v3alpha1", "v2", 1), "apiVersion", "Listener exists only in getambassador.io/v3alpha1"},

		// TLSContext
		{"min version spelling", res(KindTLSContext, "  min_tls_version: \"1.2\"\n"), "spec.min_tls_version", `must be one of v1.0, v1.1, v1.2, v1.3, got "1.2"`},
		{"max version unknown", res(KindTLSContext, "  max_tls_version: v1.4\n"), "spec.max_tls_version", "must be one of"},
		{"min above max", res(KindTLSContext, "  min_tls_version: v1.3\n  max_tls_version: v1.2\n"), "spec.min_tls_version", "v1.3 is above max_tls_version v1.2"},
		{"cert file without key", res(KindTLSContext, "  cert_chain_file: /c.pem\n"), "spec.private_key_file", "required when cert_chain_file is set"},
		{"key file without cert", res(KindTLSContext, "  private_key_file: /k.pem\n"), "spec.cert_chain_file", "required when private_key_file is set"},
		{"secret and files", res(KindTLSContext, "  secret: s\n  cert_chain_file: /c.pem\n  private_key_file: /k.pem\n"), "spec.cert_chain_file", "cannot be used together with secret"},
		{"alpn empty item", res(KindTLSContext, "  alpn_protocols: h2,,http/1.1\n"), "spec.alpn_protocols", "comma-separated"},
		{"alpn as list", res(KindTLSContext, "  alpn_protocols: [h2]\n"), "spec.alpn_protocols", "must be a string, got a list"},
		{"empty host", res(KindTLSContext, "  hosts: [a, \"\"]\n  secret: s\n"), "spec.hosts[1]", "must not be empty"},
		{"redirect port", res(KindTLSContext, "  redirect_cleartext_from: 0\n"), "spec.redirect_cleartext_from", "between 1 and 65535"},
		{"sni invalid", res(KindTLSContext, "  sni: bad name\n"), "spec.sni", "character"},
		{"cert_required text", res(KindTLSContext, "  cert_required: \"true\"\n"), "spec.cert_required", "must be true or false"},

		// Host
		{"tlsContext and tls", res(KindHost, "  tlsContext: {name: c}\n  tls: {min_tls_version: v1.2}\n"), "spec.tls", "cannot be used together with tlsContext"},
		{"tlsSecret without name", res(KindHost, "  tlsSecret: {namespace: n}\n"), "spec.tlsSecret.name", "required when tlsSecret is given"},
		{"tlsContext without name", res(KindHost, "  tlsContext: {}\n"), "spec.tlsContext.name", "required when tlsContext is given"},
		{"host tls version", res(KindHost, "  tls: {max_tls_version: TLSv1.2}\n"), "spec.tls.max_tls_version", "must be one of"},
		{"host tls has secret", res(KindHost, "  tls: {secret: s}\n"), "spec.tls.secret", "unknown field"},
		{"host tls key alone", res(KindHost, "  tls: {private_key_file: /k}\n"), "spec.tls.cert_chain_file", "required when private_key_file"},

		// Listener
		{"listener port missing", res(KindListener, "  protocol: TCP\n"), "spec.port", "required"},
		{"listener port big", res(KindListener, "  port: 65536\n  protocol: TCP\n"), "spec.port", "between 1 and 65535"},
		{"listener protocol", res(KindListener, "  port: 1\n  protocol: UDP\n"), "spec.protocol", "must be one of HTTP, HTTPS, HTTPPROXY, HTTPSPROXY, TCP, TLS"},
		{"listener protocol lower case", res(KindListener, "  port: 1\n  protocol: tcp\n"), "spec.protocol", "must be one of"},
		{"listener stack item", res(KindListener, "  port: 1\n  protocolStack: [TLS, QUIC]\n"), "spec.protocolStack[1]", `got "QUIC"`},
		{"listener disagree", res(KindListener, "  port: 1\n  protocol: TCP\n  protocolStack: [TLS, TCP]\n"), "spec.protocolStack", "disagrees with protocol TCP"},
		{"listener neither", res(KindListener, "  port: 1\n"), "spec.protocol", "give protocol"},
		{"listener security model", res(KindListener, "  port: 1\n  protocol: TCP\n  securityModel: BOGUS\n"), "spec.securityModel", "must be one of XFP, SECURE, INSECURE"},
		{"listener l7Depth", res(KindListener, "  port: 1\n  protocol: TCP\n  l7Depth: -1\n"), "spec.l7Depth", "must not be negative"},

		// Module
		{"module unknown key", strings.Replace(res(KindModule, "  config:\n    use_proxy_proto: true\n    foo: 1\n"), "name: x", "name: ambassador", 1), "spec.config.foo", "unknown field"},
		{"module breaker", strings.Replace(res(KindModule, "  config:\n    circuit_breakers:\n    - priority: low\n"), "name: x", "name: ambassador", 1), "spec.config.circuit_breakers[0].priority", "must be default or high"},
		{"module typed key type", strings.Replace(res(KindModule, "  config:\n    use_proxy_proto: \"true\"\n"), "name: x", "name: ambassador", 1), "spec.config.use_proxy_proto", "must be true or false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, ps := loadString(t, tt.in)
			if len(rs) != 0 {
				t.Errorf("resource kept: %q", names(rs))
			}
			var found *Problem
			for i, p := range ps {
				if p.Field == tt.field && !p.IsWarning() {
					found = &ps[i]
				}
			}
			if found == nil {
				t.Fatalf("no error on field %s; problems: %s", tt.field, problemStrings(ps))
			}
			if !strings.Contains(found.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to contain %q", found.Reason, tt.reason)
			}
			if found.Origin.File != "test.yaml" || found.Origin.Line == 0 {
				t.Errorf("origin = %+v, want test.yaml and a line", found.Origin)
			}
			if found.Ref.Kind == "" {
				t.Errorf("problem has no resource: %+v", found)
			}
		})
	}
}

// TestAccepts: values at the edge of each rule load.
func TestAccepts(t *testing.T) {
	tests := []struct{ name, in string }{
		{"port as string", res(KindTCPMapping, "  port: \"2222\"\n  service: up:22\n")},
		{"port bounds", res(KindTCPMapping, "  port: 65535\n  service: up:22\n")},
		{"weight 0 and 100", res(KindTCPMapping, okTCP+"  weight: 0\n") + "---\n" + strings.Replace(res(KindTCPMapping, okTCP+"  weight: 100\n"), "name: x", "name: y", 1)},
		{"idle timeout zero", res(KindTCPMapping, okTCP+"  idle_timeout_ms: 0\n")},
		{"address v6", res(KindTCPMapping, okTCP+"  address: \"::1\"\n")},
		{"host star", res(KindTCPMapping, okTCP+"  host: \"*\"\n")},
		{"host glob", res(KindTCPMapping, okTCP+"  host: \"*.example.com\"\n")},
		{"host single label", res(KindTCPMapping, okTCP+"  host: my-host-1\n")},
		{"host null", res(KindTCPMapping, okTCP+"  host: ~\n")},
		{"breaker priorities", res(KindTCPMapping, okTCP+"  circuit_breakers:\n  - priority: default\n  - priority: high\n    max_retries: 0\n")},
		{"annotations", withMeta(KindTCPMapping, "  annotations:\n    tcpmap.io/connect-timeout-ms: \"1500\"\n    tcpmap.io/send-proxy-protocol: v2\n    other.io/x: y\n", okTCP)},
		{"tls context name with dot", res(KindTCPMapping, okTCP+"  tls: origination-context.other\n")},
		{"tls context neither secret nor file", res(KindTLSContext, "  sni: upstream.example.com\n  min_tls_version: v1.2\n  max_tls_version: v1.3\n")},
		{"tls context files", res(KindTLSContext, "  cert_chain_file: /c.pem\n  private_key_file: /k.pem\n  hosts: [\"*.example.com\"]\n  alpn_protocols: h2, http/1.1\n")},
		{"tls context sni ip", res(KindTLSContext, "  sni: 10.0.0.1\n")},
		{"listener both agree", res(KindListener, "  port: 1\n  protocol: TLS\n  protocolStack: [TLS, TCP]\n")},
		{"listener udp stack", res(KindListener, "  port: 1\n  protocolStack: [UDP]\n")},
		{"name with dots", strings.Replace(res(KindTCPMapping, okTCP), "name: x", "name: a.b-c", 1)},
		{"status ignored", res(KindHost, "  hostname: a.example.com\n") + "status:\n  state: Ready\n"},
		{"json flow", `{"apiVersion":"getambassador.io/v3alpha1","kind":"TCPMapping","metadata":{"name":"j"},"spec":{"port":1,"service":"s"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, ps := loadString(t, tt.in)
			if len(ps) != 0 || len(rs) == 0 {
				t.Errorf("got %d resources, problems: %s", len(rs), problemStrings(ps))
			}
		})
	}
}

// TestAllProblemsReported: one broken resource lists every problem, not
// just the first, and is still left out.
func TestAllProblemsReported(t *testing.T) {
	in := res(KindTCPMapping, "  port: ssh\n  service: \"\"\n  weight: 200\n  foo: 1\n  circuit_breakers:\n  - priority: low\n    max_connections: many\n")
	rs, ps := loadString(t, in)
	if len(rs) != 0 {
		t.Errorf("resource kept")
	}
	got := map[string]int{}
	for _, p := range ps {
		got[p.Field] = p.Origin.Line
	}
	want := map[string]int{
		"spec.port":                         6,
		"spec.service":                      7,
		"spec.weight":                       8,
		"spec.foo":                          9,
		"spec.circuit_breakers[0].priority": 11,
		"spec.circuit_breakers[0].max_connections": 12,
	}
	for f, line := range want {
		if got[f] != line {
			t.Errorf("field %s at line %d, want %d", f, got[f], line)
		}
	}
	if len(ps) != len(want) {
		t.Errorf("problems: %s", problemStrings(ps))
	}
}

func TestProblemMessage(t *testing.T) {
	_, ps := loadString(t, res(KindTCPMapping, okTCP+"  weight: 101\n"))
	if len(ps) != 1 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	want := "TCPMapping default/x: spec.weight: must be a percentage between 0 and 100, got 101 (test.yaml:8)"
	if got := ps[0].Error(); got != want {
		t.Errorf("message =\n%s\nwant\n%s", got, want)
	}
}

func TestModule(t *testing.T) {
	rs, ps := Load([]string{"testdata/module-http.yaml"})
	if len(rs) != 1 {
		t.Fatalf("resources = %q, problems: %s", names(rs), problemStrings(ps))
	}
	cfg := rs[0].Module.Config
	if got, want := strings.Join(cfg.Ignored, ","), "use_remote_address,xff_num_trusted_hops"; got != want {
		t.Errorf("ignored = %q, want %q", got, want)
	}
	if cfg.EnableIPv6 == nil || !*cfg.EnableIPv6 || len(cfg.CircuitBreakers) != 1 || *cfg.CircuitBreakers[0].MaxConnections != 2048 {
		t.Errorf("config = %+v", cfg)
	}
	var fields []string
	for _, p := range ps {
		if !p.IsWarning() || p.Reason != "only affects HTTP; ignored by tcpmap" {
			t.Errorf("unexpected problem: %s", p.Error())
		}
		fields = append(fields, p.Field)
	}
	if got, want := strings.Join(fields, ","), "spec.config.use_remote_address,spec.config.xff_num_trusted_hops"; got != want {
		t.Errorf("warned fields = %q, want %q", got, want)
	}

	// Another Module name configures nothing.
	rs, ps = loadString(t, res(KindModule, "  config:\n    server: {}\n"))
	if len(rs) != 0 || len(ps) != 1 || !ps[0].IsWarning() || !strings.Contains(ps[0].Reason, "only the Module named ambassador") {
		t.Errorf("got %q, %s", names(rs), problemStrings(ps))
	}
}

func TestAnnotationAccessors(t *testing.T) {
	rs, ps := loadString(t, withMeta(KindTCPMapping, "  annotations:\n    tcpmap.io/connect-timeout-ms: \"1500\"\n    tcpmap.io/send-proxy-protocol: v2\n", okTCP))
	if len(ps) != 0 || len(rs) != 1 {
		t.Fatalf("problems: %s", problemStrings(ps))
	}
	if d, ok := rs[0].ConnectTimeout(); !ok || d.Milliseconds() != 1500 {
		t.Errorf("ConnectTimeout = %v, %v", d, ok)
	}
	if got := rs[0].SendProxyProtocol(); got != 2 {
		t.Errorf("SendProxyProtocol = %d", got)
	}
	var none Resource
	if _, ok := none.ConnectTimeout(); ok || none.SendProxyProtocol() != 0 {
		t.Errorf("zero resource has annotations")
	}
}

func TestMissingTypeFields(t *testing.T) {
	tests := []struct{ name, in, field, reason string }{
		{"no apiVersion", "kind: TCPMapping\nmetadata: {name: x}\nspec: {port: 1, service: s}\n", "apiVersion", "required"},
		{"no kind", "apiVersion: getambassador.io/v3alpha1\nmetadata: {name: x}\nspec: {port: 1, service: s}\n", "kind", "required"},
		{"kind not a string", "apiVersion: getambassador.io/v3alpha1\nkind: [TCPMapping]\nmetadata: {name: x}\n", "kind", "must be a string, got a list"},
		{"neither", "metadata: {name: x}\nspec: {port: 1}\n", "", "no apiVersion and no kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, ps := loadString(t, tt.in)
			if len(rs) != 0 || len(ps) != 1 {
				t.Fatalf("got %q, %s", names(rs), problemStrings(ps))
			}
			if p := ps[0]; p.Field != tt.field || !strings.Contains(p.Reason, tt.reason) || p.IsWarning() || p.Origin.Line == 0 {
				t.Errorf("problem = %+v, want field %q, reason %q", p, tt.field, tt.reason)
			}
		})
	}
}
