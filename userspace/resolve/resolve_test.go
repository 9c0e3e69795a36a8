package resolve

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

func TestUpstreamDefaults(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	runCases(t, []resolveCase{
		{
			name: "docs ssh example",
			in:   []config.Resource{tcp("ssh", 2222, "upstream:22")},
			want: []string{"*:2222/TCP - default/ssh 100 -> upstream:22"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				l, r := find(t, s, "*:2222", "")
				if l.Source != nil || l.ProxyProtocol {
					t.Errorf("internal listener has Source %v, ProxyProtocol %v", l.Source, l.ProxyProtocol)
				}
				want := snapshot.Route{
					ConnectTimeout: snapshot.DefaultConnectTimeout,
					CircuitBreaker: snapshot.CircuitBreaker{Priority: "default", MaxConnections: 1024, MaxPendingRequests: 1024},
					Backends: []snapshot.Backend{{
						Mapping: config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: "ssh"}, Weight: 100,
						Upstream: snapshot.Upstream{Service: "upstream:22", Host: "upstream", Port: 22, EnableIPv4: true},
					}},
				}
				if !reflect.DeepEqual(*r, want) {
					t.Errorf("route = %+v\nwant %+v", *r, want)
				}
			},
		},
		{
			name: "port 80 without TLS",
			in:   []config.Resource{tcp("a", 1, "upstream"), tcp("b", 2, "http://upstream")},
			want: []string{"*:1/TCP - default/a 100 -> upstream:80", "*:2/TCP - default/b 100 -> upstream:80"},
		},
		{
			name: "port 443 when originating",
			in: []config.Resource{
				tcp("https", 1, "https://upstream"),
				mapping("ctx", config.TCPMappingSpec{Port: port(2), Service: "http://upstream", TLS: &config.TLSRef{Context: "origin", Originate: true}}),
				mapping("v2", config.TCPMappingSpec{Port: port(3), Service: "upstream", TLS: &config.TLSRef{Originate: true}}),
				tlsContext("origin", config.TLSContextSpec{}),
			},
			want: []string{
				"*:1/TCP - default/https 100 -> upstream:443+tls",
				"*:2/TCP - default/ctx 100 -> upstream:443+tls",
				"*:3/TCP - default/v2 100 -> upstream:443+tls",
			},
			check: func(t *testing.T, s snapshot.Snapshot) {
				if o := backend(t, s, "default/v2").Origination; o.Context != nil || o.ServerName != "upstream" || o.CertPEM != nil {
					t.Errorf("v2 tls: true origination = %+v, want no context, SNI upstream", o)
				}
				if o := backend(t, s, "default/ctx").Origination; o.Context == nil || o.Context.Name != "origin" {
					t.Errorf("http:// with tls context origination = %+v", o)
				}
			},
		},
		{
			name: "explicit port wins when originating",
			in:   []config.Resource{tcp("a", 1, "https://upstream:9999")},
			want: []string{"*:1/TCP - default/a 100 -> upstream:9999+tls"},
		},
		{
			name: "IPv6 literal upstream",
			in:   []config.Resource{tcp("a", 1, "[::1]:9000"), tcp("b", 2, "https://[fd00::5]")},
			want: []string{"*:1/TCP - default/a 100 -> [::1]:9000", "*:2/TCP - default/b 100 -> [fd00::5]:443+tls"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				if b := backend(t, s, "default/a"); b.Upstream.Host != "::1" {
					t.Errorf("host = %q, want ::1 without brackets", b.Upstream.Host)
				}
				if o := backend(t, s, "default/b").Origination; o.ServerName != "" {
					t.Errorf("SNI for an IP literal = %q, want none", o.ServerName)
				}
			},
		},
		{
			name: "cluster domain expansion",
			opts: Options{ClusterDomain: "cluster.local", AmbassadorNamespace: "ambassador"},
			in: []config.Resource{
				tcp("a", 1, "db:5432"), tcp("b", 2, "db.data:5432"), tcp("c", 3, "db.example.com:5432"),
				tcp("d", 4, "10.1.2.3:5432"), tcp("e", 5, "https://db.data"),
			},
			want: []string{
				"*:1/TCP - default/a 100 -> db.ambassador.svc.cluster.local:5432",
				"*:2/TCP - default/b 100 -> db.data.svc.cluster.local:5432",
				"*:3/TCP - default/c 100 -> db.example.com:5432",
				"*:4/TCP - default/d 100 -> 10.1.2.3:5432",
				"*:5/TCP - default/e 100 -> db.data.svc.cluster.local:443+tls",
			},
			check: func(t *testing.T, s snapshot.Snapshot) {
				if b := backend(t, s, "default/e"); b.Upstream.Service != "https://db.data" || b.Origination.ServerName != "db.data.svc.cluster.local" {
					t.Errorf("backend e = %+v, want service as written and SNI the dialed name", b)
				}
			},
		},
		{
			name: "cluster domain default namespace",
			opts: Options{ClusterDomain: "cluster.local"},
			in:   []config.Resource{tcp("a", 1, "db:5432")},
			want: []string{"*:1/TCP - default/a 100 -> db.default.svc.cluster.local:5432"},
		},
		{
			name: "plain DNS without cluster domain",
			in:   []config.Resource{tcp("a", 1, "db.data:5432")},
			want: []string{"*:1/TCP - default/a 100 -> db.data:5432"},
		},
		{
			name: "unknown resolver warns and serves",
			in: []config.Resource{
				mapping("a", config.TCPMappingSpec{Port: port(1), Service: "db:1", Resolver: "consul-dc1"}),
				mapping("b", config.TCPMappingSpec{Port: port(2), Service: "db:1", Resolver: "kubernetes-service"}),
			},
			want:     []string{"*:1/TCP - default/a 100 -> db:1", "*:2/TCP - default/b 100 -> db:1"},
			problems: []string{`warning: TCPMapping default/a: spec.resolver: tcpmap has no resolver "consul-dc1"`},
		},
		{
			name: "client certificate secret in its own namespace",
			in: []config.Resource{
				mapping("a", config.TCPMappingSpec{Port: port(1), Service: "db:1", TLS: &config.TLSRef{Context: "origin", Originate: true}}),
				tlsContext("default/origin", config.TLSContextSpec{Secret: "client.certs"}),
				secret("certs/client", ca.Client(t, "tcpmap")),
			},
			want: []string{"*:1/TCP - default/a 100 -> db:1+tls"},
		},
	})
}

func TestMappingFieldErrors(t *testing.T) {
	runCases(t, []resolveCase{
		{
			name: "missing port and service",
			in: []config.Resource{
				mapping("noport", config.TCPMappingSpec{Service: "a:1"}),
				mapping("nosvc", config.TCPMappingSpec{Port: port(1)}),
				tcp("ok", 2, "a:1"),
			},
			want: []string{"*:2/TCP - default/ok 100 -> a:1"},
			problems: []string{
				"TCPMapping default/noport: spec.port: port is required",
				"TCPMapping default/nosvc: spec.service: service is required",
			},
		},
		{
			name: "bad values",
			in: []config.Resource{
				tcp("port", 70000, "a:1"),
				mapping("addr", config.TCPMappingSpec{Port: port(1), Address: "localhost", Service: "a:1"}),
				mapping("weight", config.TCPMappingSpec{Port: port(2), Service: "a:1", Weight: ptr(101)}),
				mapping("negweight", config.TCPMappingSpec{Port: port(3), Service: "a:1", Weight: ptr(-1)}),
				mapping("idle", config.TCPMappingSpec{Port: port(4), Service: "a:1", IdleTimeoutMs: config.IntOrString{Value: -5, Set: true}}),
				mapping("scheme", config.TCPMappingSpec{Port: port(5), Service: "tcp://a:1"}),
				mapping("host", config.TCPMappingSpec{Port: port(6), Host: "a.*.com", Service: "a:1"}),
				mapping("cb", config.TCPMappingSpec{Port: port(7), Service: "a:1", CircuitBreakers: []config.CircuitBreaker{{MaxConnections: ptr(0)}}}),
				mapping("ann", config.TCPMappingSpec{Port: port(8), Service: "a:1"}, AnnotationConnectTimeout, "soon", AnnotationSendProxyProtocol, "v3"),
				mapping("noip", config.TCPMappingSpec{Port: port(9), Service: "a:1", EnableIPv4: ptr(false)}),
				mapping("noip-literal", config.TCPMappingSpec{Port: port(10), Service: "10.0.0.1:1", EnableIPv4: ptr(false)}),
			},
			want: []string{"*:10/TCP - default/noip-literal 100 -> 10.0.0.1:1"},
			problems: []string{
				"TCPMapping default/port: spec.port: port must be 1..65535, got 70000",
				`TCPMapping default/addr: spec.address: address must be an IP literal, got "localhost"`,
				"TCPMapping default/weight: spec.weight: weight must be 0..100 (a percentage), got 101",
				"TCPMapping default/negweight: spec.weight: weight must be 0..100",
				"TCPMapping default/idle: spec.idle_timeout_ms: idle_timeout_ms must not be negative",
				`TCPMapping default/scheme: spec.service: unknown scheme "tcp"`,
				`TCPMapping default/host: spec.host: host "a.*.com" may hold one "*"`,
				"TCPMapping default/cb: spec.circuit_breakers: [0].max_connections must be at least 1",
				`TCPMapping default/ann: metadata.annotations["tcpmap.io/connect-timeout-ms"]: want a positive number of milliseconds, got "soon"`,
				`TCPMapping default/ann: metadata.annotations["tcpmap.io/send-proxy-protocol"]: want v1 or v2, got "v3"`,
				"TCPMapping default/noip: spec.enable_ipv4: enable_ipv4 and enable_ipv6 are both false, so service host a cannot be resolved",
			},
		},
		{
			name: "address is normalised",
			in:   []config.Resource{mapping("a", config.TCPMappingSpec{Port: port(1), Address: "::ffff:127.0.0.1", Service: "a:1"})},
			want: []string{"127.0.0.1:1/TCP - default/a 100 -> a:1"},
		},
	})
}

func TestAmbassadorID(t *testing.T) {
	blue := mapping("blue", config.TCPMappingSpec{Port: port(1), Service: "a:1", AmbassadorID: config.AmbassadorID{"blue"}})
	auto := mapping("auto", config.TCPMappingSpec{Port: port(2), Service: "a:1", AmbassadorID: config.AmbassadorID{"_automatic_"}})
	plain := tcp("plain", 3, "a:1")
	blueModule := module("ambassador", config.ModuleConfig{UseProxyProto: ptr(true)})
	blueModule.Module.AmbassadorID = config.AmbassadorID{"blue"}
	runCases(t, []resolveCase{
		{
			name: "default installation",
			in:   []config.Resource{blue, auto, plain, blueModule},
			want: []string{"*:2/TCP - default/auto 100 -> a:1", "*:3/TCP - default/plain 100 -> a:1"},
		},
		{
			name: "blue installation",
			opts: Options{AmbassadorID: "blue"},
			in:   []config.Resource{blue, auto, plain, blueModule},
			want: []string{"*:1/TCP+PROXY - default/blue 100 -> a:1", "*:2/TCP+PROXY - default/auto 100 -> a:1"},
		},
	})
}

func TestModule(t *testing.T) {
	high := config.CircuitBreaker{Priority: "high", MaxConnections: ptr(7)}
	moduleCB := config.CircuitBreaker{MaxConnections: ptr(10), MaxPendingRequests: ptr(5)}
	runCases(t, []resolveCase{
		{
			name: "defaults without module",
			in:   []config.Resource{tcp("a", 1, "db:1")},
			want: []string{"*:1/TCP - default/a 100 -> db:1"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				if u := backend(t, s, "default/a").Upstream; !u.EnableIPv4 || u.EnableIPv6 {
					t.Errorf("ipv4/ipv6 = %v/%v, want true/false", u.EnableIPv4, u.EnableIPv6)
				}
				_, r := find(t, s, "*:1", "")
				if r.CircuitBreaker.MaxConnections != snapshot.DefaultMaxConnections || r.CircuitBreaker.MaxPendingRequests != snapshot.DefaultMaxPendingRequests {
					t.Errorf("breaker = %+v, want Envoy defaults", r.CircuitBreaker)
				}
			},
		},
		{
			name: "module sets ipv6, circuit breakers and proxy protocol",
			in: []config.Resource{
				module("ambassador", config.ModuleConfig{
					EnableIPv6: ptr(true), UseProxyProto: ptr(true),
					CircuitBreakers: []config.CircuitBreaker{high, moduleCB},
				}),
				tcp("inherits", 1, "db:1"),
				mapping("own", config.TCPMappingSpec{
					Port: port(2), Service: "db:1", EnableIPv6: ptr(false),
					CircuitBreakers: []config.CircuitBreaker{{Priority: "default", MaxConnections: ptr(3)}},
				}),
				mapping("highonly", config.TCPMappingSpec{Port: port(3), Service: "db:1", CircuitBreakers: []config.CircuitBreaker{high}}),
				sni("tls", 4, "a.example.com", "db:1"),
				host("h", config.HostSpec{Hostname: "*", TLSSecret: &config.SecretRef{Name: "cert"}}),
				secret("cert", tlstest.NewCA(t, "ca").Server(t, "a.example.com")),
			},
			want: []string{
				"*:1/TCP+PROXY - default/inherits 100 -> db:1",
				"*:2/TCP+PROXY - default/own 100 -> db:1",
				"*:3/TCP+PROXY - default/highonly 100 -> db:1",
				"*:4/TLS+PROXY a.example.com default/tls 100 -> db:1",
			},
			check: func(t *testing.T, s snapshot.Snapshot) {
				if u := backend(t, s, "default/inherits").Upstream; !u.EnableIPv4 || !u.EnableIPv6 {
					t.Errorf("inherited ipv4/ipv6 = %v/%v, want true/true", u.EnableIPv4, u.EnableIPv6)
				}
				if u := backend(t, s, "default/own").Upstream; u.EnableIPv6 {
					t.Error("mapping enable_ipv6: false did not override the Module")
				}
				want := map[string]snapshot.CircuitBreaker{
					"*:1": {Priority: "default", MaxConnections: 10, MaxPendingRequests: 5},
					"*:2": {Priority: "default", MaxConnections: 3, MaxPendingRequests: 1024},
					"*:3": {Priority: "default", MaxConnections: 10, MaxPendingRequests: 5},
				}
				for key, cb := range want {
					if _, r := find(t, s, key, ""); r.CircuitBreaker != cb {
						t.Errorf("%s breaker = %+v, want %+v", key, r.CircuitBreaker, cb)
					}
				}
			},
		},
		{
			name: "module disables ipv4",
			in: []config.Resource{
				module("ambassador", config.ModuleConfig{EnableIPv4: ptr(false), EnableIPv6: ptr(true)}),
				tcp("a", 1, "db:1"),
			},
			want: []string{"*:1/TCP - default/a 100 -> db:1"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				if u := backend(t, s, "default/a").Upstream; u.EnableIPv4 || !u.EnableIPv6 {
					t.Errorf("ipv4/ipv6 = %v/%v, want false/true", u.EnableIPv4, u.EnableIPv6)
				}
			},
		},
		{
			name: "second ambassador module and other modules",
			in: []config.Resource{
				module("ambassador", config.ModuleConfig{UseProxyProto: ptr(false)}),
				module("other/ambassador", config.ModuleConfig{UseProxyProto: ptr(true)}),
				module("tls", config.ModuleConfig{UseProxyProto: ptr(true)}),
				tcp("a", 1, "db:1"),
			},
			want: []string{"*:1/TCP - default/a 100 -> db:1"},
			problems: []string{
				"Module other/ambassador: metadata.name: only one ambassador Module is allowed per installation; Module default/ambassador is in effect",
				"warning: Module default/tls: metadata.name: only the Module named ambassador configures tcpmap",
			},
		},
		{
			name: "invalid module breaker falls back to defaults",
			in: []config.Resource{
				module("ambassador", config.ModuleConfig{CircuitBreakers: []config.CircuitBreaker{{MaxConnections: ptr(-1)}}}),
				tcp("a", 1, "db:1"),
			},
			want:     []string{"*:1/TCP - default/a 100 -> db:1"},
			problems: []string{"Module default/ambassador: config.circuit_breakers: [0].max_connections must be at least 1, got -1; Envoy's defaults apply instead"},
		},
	})
}

func TestRouteSettings(t *testing.T) {
	runCases(t, []resolveCase{
		{
			name: "idle timeout, connect timeout and send-proxy annotations",
			opts: Options{DefaultConnectTimeout: 2 * time.Second},
			in: []config.Resource{
				mapping("a", config.TCPMappingSpec{Port: port(1), Service: "db:1", IdleTimeoutMs: config.IntOrString{Value: 30000, Set: true}},
					AnnotationConnectTimeout, "750", AnnotationSendProxyProtocol, "v2"),
				mapping("b", config.TCPMappingSpec{Port: port(2), Service: "db:1"}, AnnotationSendProxyProtocol, "v1"),
			},
			want: []string{"*:1/TCP - default/a 100 -> db:1", "*:2/TCP - default/b 100 -> db:1"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				_, r := find(t, s, "*:1", "")
				if r.IdleTimeout != 30*time.Second || r.ConnectTimeout != 750*time.Millisecond || r.Backends[0].SendProxyProtocol != 2 {
					t.Errorf("route a = idle %v connect %v send-proxy %d", r.IdleTimeout, r.ConnectTimeout, r.Backends[0].SendProxyProtocol)
				}
				_, r = find(t, s, "*:2", "")
				if r.IdleTimeout != 0 || r.ConnectTimeout != 2*time.Second || r.Backends[0].SendProxyProtocol != 1 {
					t.Errorf("route b = idle %v connect %v send-proxy %d", r.IdleTimeout, r.ConnectTimeout, r.Backends[0].SendProxyProtocol)
				}
			},
		},
	})
}

func TestListenerResources(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	cert := secret("cert", ca.Server(t, "*.example.com"))
	wildHost := host("wild", config.HostSpec{Hostname: "*.example.com", TLSSecret: &config.SecretRef{Name: "cert"}})
	runCases(t, []resolveCase{
		{
			name: "TCP listener with PROXY",
			in: []config.Resource{
				listener("l2222", config.ListenerSpec{Port: port(2222), ProtocolStack: []string{"PROXY", "TCP"}}),
				tcp("ssh", 2222, "upstream:22"),
			},
			want: []string{"*:2222/TCP+PROXY - default/ssh 100 -> upstream:22"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				l, _ := find(t, s, "*:2222", "")
				if l.Source == nil || *l.Source != (config.Ref{Kind: config.KindListener, Namespace: "default", Name: "l2222"}) {
					t.Errorf("Source = %v, want Listener default/l2222", l.Source)
				}
			},
		},
		{
			name: "TLS listener applies to every address",
			in: []config.Resource{
				listener("tls", config.ListenerSpec{Port: port(8443), Protocol: "TLS"}),
				mapping("a", config.TCPMappingSpec{Port: port(8443), Address: "127.0.0.1", Host: "a.example.com", Service: "a:1"}),
				mapping("b", config.TCPMappingSpec{Port: port(8443), Address: "127.0.0.2", Host: "b.example.com", Service: "b:1"}),
				cert, wildHost,
			},
			want: []string{
				"127.0.0.1:8443/TLS a.example.com default/a 100 -> a:1",
				"127.0.0.2:8443/TLS b.example.com default/b 100 -> b:1",
			},
		},
		{
			name: "listener disagreement",
			in: []config.Resource{
				listener("tls", config.ListenerSpec{Port: port(1), Protocol: "TLS"}),
				listener("tcp", config.ListenerSpec{Port: port(2), Protocol: "TCP"}),
				listener("http", config.ListenerSpec{Port: port(3), Protocol: "HTTPS"}),
				listener("udp", config.ListenerSpec{Port: port(4), ProtocolStack: []string{"UDP"}}),
				tcp("hostless-on-tls", 1, "a:1"),
				sni("host-on-tcp", 2, "a.example.com", "a:1"),
				tcp("on-http", 3, "a:1"),
				tcp("on-udp", 4, "a:1"),
				sni("ok-tls", 1, "a.example.com", "a:1"),
				tcp("ok-tcp", 2, "a:1"),
				cert, wildHost,
			},
			want: []string{
				"*:1/TLS a.example.com default/ok-tls 100 -> a:1",
				"*:2/TCP - default/ok-tcp 100 -> a:1",
			},
			problems: []string{
				"TCPMapping default/hostless-on-tls: spec.host: Listener default/tls terminates TLS on port 1 (protocolStack [TLS TCP]), so a TCPMapping on it needs a host",
				"TCPMapping default/host-on-tcp: spec.host: Listener default/tcp does not terminate TLS on port 2 (protocolStack [TCP]), so a TCPMapping on it cannot have a host",
				"TCPMapping default/on-http: spec.port: port 3 belongs to Listener default/http, an HTTP listener (protocolStack [TLS HTTP TCP]); tcpmap serves only TCP and TLS listeners",
				"TCPMapping default/on-udp: spec.port: port 4 belongs to Listener default/udp, an UDP listener",
			},
		},
		{
			name: "listener errors",
			in: []config.Resource{
				listener("first", config.ListenerSpec{Port: port(1), Protocol: "TCP"}),
				listener("second", config.ListenerSpec{Port: port(1), Protocol: "TLS"}),
				listener("noproto", config.ListenerSpec{Port: port(2)}),
				listener("badproto", config.ListenerSpec{Port: port(3), Protocol: "QUIC"}),
				listener("badstack", config.ListenerSpec{Port: port(4), ProtocolStack: []string{"SCTP"}}),
				listener("badport", config.ListenerSpec{Port: port(0), Protocol: "TCP"}),
				tcp("a", 1, "a:1"),
			},
			want: []string{"*:1/TCP - default/a 100 -> a:1"},
			problems: []string{
				"Listener default/second: spec.port: port 1 is already configured by Listener default/first",
				"Listener default/noproto: spec.protocolStack: neither protocol nor protocolStack is set",
				`Listener default/badproto: spec.protocol: unknown protocol "QUIC"`,
				`Listener default/badstack: spec.protocolStack: unknown protocol "SCTP" in the stack`,
				"Listener default/badport: spec.port: port must be 1..65535, got 0",
			},
		},
		{
			name: "listener without mappings opens nothing",
			in:   []config.Resource{listener("tcp", config.ListenerSpec{Port: port(1), Protocol: "TCP"})},
			want: nil,
		},
	})
}

func TestPortProtocolClaims(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	tlsRes := []config.Resource{
		secret("cert", ca.Server(t, "a.example.com")),
		host("h", config.HostSpec{Hostname: "a.example.com", TLSSecret: &config.SecretRef{Name: "cert"}}),
	}
	runCases(t, []resolveCase{
		{
			name: "hostless first makes the port TCP",
			in:   append([]config.Resource{tcp("plain", 2222, "a:1"), sni("tls", 2222, "a.example.com", "b:1")}, tlsRes...),
			want: []string{"*:2222/TCP - default/plain 100 -> a:1"},
			problems: []string{
				"TCPMapping default/tls: spec.host: port 2222 is a cleartext TCP port, as set by TCPMapping default/plain (the oldest mapping on it; no Listener decides), so a TCPMapping with host cannot share it",
			},
		},
		{
			name: "host first makes the port TLS",
			in:   append([]config.Resource{sni("tls", 2222, "a.example.com", "b:1"), tcp("plain", 2222, "a:1")}, tlsRes...),
			want: []string{"*:2222/TLS a.example.com default/tls 100 -> b:1"},
			problems: []string{
				"TCPMapping default/plain: spec.host: port 2222 terminates TLS, as set by TCPMapping default/tls (the oldest mapping on it; no Listener decides), so a TCPMapping without host cannot share it",
			},
		},
		{
			name: "a discarded mapping claims nothing",
			in:   []config.Resource{sni("tls-without-cert", 2222, "nocert.example.com", "b:1"), tcp("plain", 2222, "a:1")},
			want: []string{"*:2222/TCP - default/plain 100 -> a:1"},
			problems: []string{
				"TCPMapping default/tls-without-cert: spec.host: no Host or TLSContext provides TLS for host nocert.example.com",
			},
		},
		{
			name: "protocols are per address",
			in: append([]config.Resource{
				mapping("a", config.TCPMappingSpec{Port: port(1), Address: "127.0.0.1", Service: "a:1"}),
				mapping("b", config.TCPMappingSpec{Port: port(1), Address: "127.0.0.2", Host: "a.example.com", Service: "b:1"}),
			}, tlsRes...),
			want: []string{"127.0.0.1:1/TCP - default/a 100 -> a:1", "127.0.0.2:1/TLS a.example.com default/b 100 -> b:1"},
		},
	})
}

func TestAddressConflicts(t *testing.T) {
	all := tcp("all", 1, "a:1")
	local := mapping("local", config.TCPMappingSpec{Port: port(1), Address: "127.0.0.1", Service: "b:1"})
	local2 := mapping("local2", config.TCPMappingSpec{Port: port(1), Address: "127.0.0.2", Service: "c:1"})
	unspec := mapping("unspec", config.TCPMappingSpec{Port: port(1), Address: "0.0.0.0", Service: "d:1"})
	runCases(t, []resolveCase{
		{
			name: "all addresses first",
			in:   []config.Resource{all, local},
			want: []string{"*:1/TCP - default/all 100 -> a:1"},
			problems: []string{
				"TCPMapping default/local: spec.address: port 1 is already claimed on all addresses by TCPMapping default/all; binding it on address 127.0.0.1 as well would fail with EADDRINUSE",
			},
		},
		{
			name: "specific address first",
			in:   []config.Resource{local, all},
			want: []string{"127.0.0.1:1/TCP - default/local 100 -> b:1"},
			problems: []string{
				"TCPMapping default/all: spec.port: port 1 is already claimed on address 127.0.0.1 by TCPMapping default/local; binding it on all addresses as well would fail",
			},
		},
		{
			name: "0.0.0.0 claims all addresses",
			in:   []config.Resource{unspec, local},
			want: []string{"0.0.0.0:1/TCP - default/unspec 100 -> d:1"},
			problems: []string{
				"TCPMapping default/local: spec.address: port 1 is already claimed on all addresses by TCPMapping default/unspec",
			},
		},
		{
			name: "two specific addresses coexist, sorted by address",
			in:   []config.Resource{local2, local, tcp("other", 2, "e:1")},
			want: []string{
				"*:2/TCP - default/other 100 -> e:1",
				"127.0.0.1:1/TCP - default/local 100 -> b:1",
				"127.0.0.2:1/TCP - default/local2 100 -> c:1",
			},
		},
	})
}

func TestCanaryGroups(t *testing.T) {
	ms := func(name string, spec config.TCPMappingSpec, ann ...string) config.Resource {
		spec.Port = port(1)
		if spec.Service == "" {
			spec.Service = name + ":1"
		}
		return mapping(name, spec, ann...)
	}
	runCases(t, []resolveCase{
		{
			name: "weights 80/20",
			in:   []config.Resource{weighted(tcp("a", 1, "a:1"), 80), weighted(tcp("b", 1, "b:1"), 20)},
			want: []string{"*:1/TCP - default/a 80 -> a:1", "*:1/TCP - default/b 20 -> b:1"},
		},
		{
			name: "70 and two unweighted share the rest",
			in:   []config.Resource{weighted(tcp("a", 1, "a:1"), 70), tcp("b", 1, "b:1"), tcp("c", 1, "c:1")},
			want: []string{"*:1/TCP - default/a 70 -> a:1", "*:1/TCP - default/b 15 -> b:1", "*:1/TCP - default/c 15 -> c:1"},
		},
		{
			name: "remainder goes to the first in namespace/name order",
			in:   []config.Resource{tcp("c", 1, "c:1"), tcp("a", 1, "a:1"), tcp("b", 1, "b:1")},
			want: []string{"*:1/TCP - default/a 34 -> a:1", "*:1/TCP - default/b 33 -> b:1", "*:1/TCP - default/c 33 -> c:1"},
		},
		{
			name: "remainder with weights",
			in: []config.Resource{
				weighted(tcp("a", 1, "a:1"), 10), tcp("b", 1, "b:1"), tcp("c", 1, "c:1"),
				tcp("d", 1, "d:1"), tcp("e", 1, "e:1"),
			},
			want: []string{
				"*:1/TCP - default/a 10 -> a:1", "*:1/TCP - default/b 23 -> b:1", "*:1/TCP - default/c 23 -> c:1",
				"*:1/TCP - default/d 22 -> d:1", "*:1/TCP - default/e 22 -> e:1",
			},
		},
		{
			name: "explicit weights under 100 are kept",
			in:   []config.Resource{weighted(tcp("a", 1, "a:1"), 30), weighted(tcp("b", 1, "b:1"), 20)},
			want: []string{"*:1/TCP - default/a 30 -> a:1", "*:1/TCP - default/b 20 -> b:1"},
		},
		{
			name: "a weight of 0 is kept",
			in:   []config.Resource{weighted(tcp("a", 1, "a:1"), 0), tcp("b", 1, "b:1")},
			want: []string{"*:1/TCP - default/a 0 -> a:1", "*:1/TCP - default/b 100 -> b:1"},
		},
		{
			name:     "weight over 100 discards that mapping only",
			in:       []config.Resource{weighted(tcp("a", 1, "a:1"), 101), tcp("b", 1, "b:1")},
			want:     []string{"*:1/TCP - default/b 100 -> b:1"},
			problems: []string{"TCPMapping default/a: spec.weight: weight must be 0..100 (a percentage), got 101"},
		},
		{
			name: "total over 100 discards the group",
			in: []config.Resource{
				weighted(tcp("a", 1, "a:1"), 80), weighted(tcp("b", 1, "b:1"), 40), tcp("c", 1, "c:1"),
				tcp("other", 2, "o:1"),
			},
			want: []string{"*:2/TCP - default/other 100 -> o:1"},
			problems: []string{
				"TCPMapping default/a: spec.weight: the weights of canary group *:1 total 120, over 100 (TCPMapping default/a 80, TCPMapping default/b 40, TCPMapping default/c unset); the whole group is discarded",
				"TCPMapping default/b: spec.weight: the weights of canary group *:1 total 120",
				"TCPMapping default/c: spec.weight: the weights of canary group *:1 total 120",
			},
		},
		{
			name: "all weights 0",
			in:   []config.Resource{weighted(tcp("a", 1, "a:1"), 0), weighted(tcp("b", 1, "b:1"), 0)},
			want: nil,
			problems: []string{
				"TCPMapping default/a: spec.weight: every member of canary group *:1 has weight 0",
				"TCPMapping default/b: spec.weight: every member of canary group *:1 has weight 0",
			},
		},
		{
			name:     "unweighted member left with nothing",
			in:       []config.Resource{weighted(tcp("a", 1, "a:1"), 100), tcp("b", 1, "b:1")},
			want:     []string{"*:1/TCP - default/a 100 -> a:1", "*:1/TCP - default/b 0 -> b:1"},
			problems: []string{"warning: TCPMapping default/b: spec.weight: gets no traffic"},
		},
		{
			name: "mismatched idle timeout",
			in: []config.Resource{
				ms("a", config.TCPMappingSpec{IdleTimeoutMs: config.IntOrString{Value: 1000, Set: true}}),
				ms("b", config.TCPMappingSpec{IdleTimeoutMs: config.IntOrString{Value: 2000, Set: true}}),
			},
			want:     []string{"*:1/TCP - default/a 100 -> a:1"},
			problems: []string{"TCPMapping default/b: spec.idle_timeout_ms: cannot join canary group of TCPMapping default/a: mismatched idle_timeout_ms: 1000 != 2000"},
		},
		{
			name: "mismatched everything else",
			in: []config.Resource{
				ms("a", config.TCPMappingSpec{}),
				ms("tls", config.TCPMappingSpec{TLS: &config.TLSRef{Originate: true}}),
				ms("v4", config.TCPMappingSpec{EnableIPv4: ptr(false), EnableIPv6: ptr(true)}),
				ms("v6", config.TCPMappingSpec{EnableIPv6: ptr(true)}),
				ms("cb", config.TCPMappingSpec{CircuitBreakers: []config.CircuitBreaker{{MaxConnections: ptr(1)}}}),
				ms("ct", config.TCPMappingSpec{}, AnnotationConnectTimeout, "100"),
				ms("same", config.TCPMappingSpec{EnableIPv4: ptr(true), CircuitBreakers: []config.CircuitBreaker{{MaxConnections: ptr(1024)}}}),
				ms("https", config.TCPMappingSpec{Service: "https://h:1"}),
			},
			want: []string{
				"*:1/TCP - default/a 34 -> a:1",
				"*:1/TCP - default/https 33 -> h:1+tls",
				"*:1/TCP - default/same 33 -> same:1",
			},
			problems: []string{
				`TCPMapping default/tls: spec.tls: cannot join canary group of TCPMapping default/a: mismatched tls: "" != "true"`,
				"TCPMapping default/v4: spec.enable_ipv4: cannot join canary group of TCPMapping default/a: mismatched enable_ipv4: true != false",
				"TCPMapping default/v6: spec.enable_ipv6: cannot join canary group of TCPMapping default/a: mismatched enable_ipv6: false != true",
				"TCPMapping default/cb: spec.circuit_breakers: cannot join canary group of TCPMapping default/a: mismatched circuit_breakers: {max_connections: 1024, max_pending_requests: 1024} != {max_connections: 1, max_pending_requests: 1024}",
				`TCPMapping default/ct: metadata.annotations["tcpmap.io/connect-timeout-ms"]: cannot join canary group of TCPMapping default/a: mismatched tcpmap.io/connect-timeout-ms: 5000 != 100`,
			},
		},
		{
			name: "groups are per host on a TLS port",
			in: []config.Resource{
				weighted(sni("a1", 1, "a.example.com", "a1:1"), 70), sni("a2", 1, "a.example.com", "a2:1"),
				sni("b", 1, "b.example.com", "b:1"),
				tlsContext("ctx", config.TLSContextSpec{Hosts: []string{"a.example.com", "b.example.com"}, Secret: "cert"}),
				secret("cert", tlstest.NewCA(t, "ca").Server(t, "a.example.com", "b.example.com")),
			},
			want: []string{
				"*:1/TLS a.example.com default/a1 70 -> a1:1",
				"*:1/TLS a.example.com default/a2 30 -> a2:1",
				"*:1/TLS b.example.com default/b 100 -> b:1",
			},
		},
	})
}

func TestRouteOrder(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	in := []config.Resource{
		sni("any", 1, "*", "any:1"),
		sni("wild", 1, "*.example.com", "wild:1"),
		sni("deep", 1, "*.a.example.com", "deep:1"),
		sni("exact", 1, "x.a.example.com", "exact:1"),
		sni("short", 1, "a.io", "short:1"),
		host("h", config.HostSpec{Hostname: "*", TLSSecret: &config.SecretRef{Name: "cert"}}),
		secret("cert", ca.Server(t, "*.example.com")),
	}
	s, probs := Resolve(in, Options{})
	checkProblems(t, probs, nil)
	checkSummary(t, s, []string{
		"*:1/TLS x.a.example.com default/exact 100 -> exact:1",
		"*:1/TLS a.io default/short 100 -> short:1",
		"*:1/TLS *.a.example.com default/deep 100 -> deep:1",
		"*:1/TLS *.example.com default/wild 100 -> wild:1",
		"*:1/TLS * default/any 100 -> any:1",
	})
	l, _ := find(t, s, "*:1", "*")
	for name, want := range map[string]string{"x.a.example.com": "x.a.example.com", "y.a.example.com": "*.a.example.com", "b.example.com": "*.example.com", "other.org": "*"} {
		if r := l.RouteForSNI(name); r == nil || r.Host != want {
			t.Errorf("RouteForSNI(%q) = %v, want host %q", name, r, want)
		}
	}
}

// TestDeterministic checks that, without conflicts, the input order does
// not change the snapshot, and that resolving twice gives equal results.
func TestDeterministic(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	in := []config.Resource{
		tcp("z", 9, "z:1"),
		mapping("local", config.TCPMappingSpec{Port: port(5), Address: "127.0.0.1", Service: "l:1"}),
		mapping("local6", config.TCPMappingSpec{Port: port(5), Address: "::1", Service: "l:1"}),
		weighted(tcp("a", 3, "a:1"), 60), tcp("b", 3, "b:1"), tcp("c", 3, "c:1"),
		sni("s1", 4, "b.example.com", "s:1"), sni("s2", 4, "*.example.com", "s:2"),
		host("h", config.HostSpec{Hostname: "*.example.com", TLSSecret: &config.SecretRef{Name: "cert"}}),
		secret("cert", ca.Server(t, "*.example.com")),
	}
	s1, p1 := Resolve(in, Options{})
	checkProblems(t, p1, nil)
	rev := slices.Clone(in)
	slices.Reverse(rev)
	s2, p2 := Resolve(rev, Options{})
	if !reflect.DeepEqual(s1, s2) || len(p2) != 0 {
		t.Errorf("reversed input changed the snapshot:\n%v\n%v\nproblems %v", summary(s1), summary(s2), p2)
	}
	checkSummary(t, s1, []string{
		"*:3/TCP - default/a 60 -> a:1",
		"*:3/TCP - default/b 20 -> b:1",
		"*:3/TCP - default/c 20 -> c:1",
		"*:4/TLS b.example.com default/s1 100 -> s:1",
		"*:4/TLS *.example.com default/s2 100 -> s:2",
		"*:9/TCP - default/z 100 -> z:1",
		"127.0.0.1:5/TCP - default/local 100 -> l:1",
		"[::1]:5/TCP - default/local6 100 -> l:1",
	})
}
