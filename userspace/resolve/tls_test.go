package resolve

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"reflect"
	"testing"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

func ref(kind, r string) config.Ref {
	ns, name := splitRef(r)
	return config.Ref{Kind: kind, Namespace: ns, Name: name}
}

func TestTermination(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	clientCA := tlstest.NewCA(t, "client-ca")
	wild := ca.Server(t, "*.example.com")
	exact := ca.Server(t, "a.example.com")
	other := ca.Server(t, "other.example.com")
	mismatched := tlstest.Pair{CertPEM: wild.CertPEM, KeyPEM: exact.KeyPEM}

	// wantTerm checks the termination of route (key, host).
	wantTerm := func(key, h string, src config.Ref, pair tlstest.Pair) func(*testing.T, snapshot.Snapshot) {
		return func(t *testing.T, s snapshot.Snapshot) {
			t.Helper()
			_, r := find(t, s, key, h)
			if r.Termination == nil {
				t.Fatalf("route %s %s has no termination", key, h)
			}
			if r.Termination.Source != src {
				t.Errorf("termination source = %v, want %v", r.Termination.Source, src)
			}
			if !bytes.Equal(r.Termination.CertPEM, pair.CertPEM) || !bytes.Equal(r.Termination.KeyPEM, pair.KeyPEM) {
				t.Error("termination certificate is not the expected one")
			}
			if _, err := tlsconfig.ServerConfig(r.Termination); err != nil {
				t.Errorf("ServerConfig: %v", err)
			}
		}
	}
	runCases(t, []resolveCase{
		{
			name: "host glob matches",
			in: []config.Resource{
				sni("m", 1, "a.example.com", "a:1"),
				host("wild", config.HostSpec{Hostname: "*.example.com", TLSSecret: &config.SecretRef{Name: "wild"}}),
				secret("wild", wild),
			},
			want:  []string{"*:1/TLS a.example.com default/m 100 -> a:1"},
			check: wantTerm("*:1", "a.example.com", ref(config.KindHost, "wild"), wild),
		},
		{
			name: "host glob covers a wildcard mapping host",
			in: []config.Resource{
				sni("m", 1, "*.a.example.com", "a:1"),
				host("wild", config.HostSpec{Hostname: "*.example.com", TLSSecret: &config.SecretRef{Name: "wild"}}),
				secret("wild", wild),
			},
			want:  []string{"*:1/TLS *.a.example.com default/m 100 -> a:1"},
			check: wantTerm("*:1", "*.a.example.com", ref(config.KindHost, "wild"), wild),
		},
		{
			name: "sorted-first host wins",
			in: []config.Resource{
				sni("m", 1, "a.example.com", "a:1"),
				host("z/specific", config.HostSpec{Hostname: "a.example.com", TLSSecret: &config.SecretRef{Name: "exact"}}),
				host("z/wild", config.HostSpec{Hostname: "*.example.com", TLSSecret: &config.SecretRef{Name: "wild"}}),
				host("a/wild", config.HostSpec{Hostname: "*.example.com", TLSSecret: &config.SecretRef{Name: "wild", Namespace: "z"}}),
				secret("z/exact", exact), secret("z/wild", wild),
			},
			want:  []string{"*:1/TLS a.example.com default/m 100 -> a:1"},
			check: wantTerm("*:1", "a.example.com", ref(config.KindHost, "a/wild"), wild),
		},
		{
			name: "host without certificate is skipped for a TLSContext",
			in: []config.Resource{
				sni("m", 1, "a.example.com", "a:1"),
				host("plain", config.HostSpec{Hostname: "a.example.com"}),
				tlsContext("ctx", config.TLSContextSpec{Hosts: []string{"a.example.com"}, Secret: "exact"}),
				secret("exact", exact),
			},
			want:  []string{"*:1/TLS a.example.com default/m 100 -> a:1"},
			check: wantTerm("*:1", "a.example.com", ref(config.KindTLSContext, "ctx"), exact),
		},
		{
			name: "TLSContext hosts match exactly, globs included",
			in: []config.Resource{
				sni("glob", 1, "*.example.com", "a:1"),
				sni("foo", 1, "foo.example.com", "b:1"),
				tlsContext("ctx", config.TLSContextSpec{Hosts: []string{"*.example.com"}, Secret: "wild"}),
				secret("wild", wild),
			},
			want:     []string{"*:1/TLS *.example.com default/glob 100 -> a:1"},
			problems: []string{"TCPMapping default/foo: spec.host: no Host or TLSContext provides TLS for host foo.example.com"},
			check:    wantTerm("*:1", "*.example.com", ref(config.KindTLSContext, "ctx"), wild),
		},
		{
			name: "TLSContext in another namespace, several listing the host",
			in: []config.Resource{
				sni("m", 1, "a.example.com", "a:1"),
				tlsContext("z/second", config.TLSContextSpec{Hosts: []string{"a.example.com"}, Secret: "exact"}),
				tlsContext("b/first", config.TLSContextSpec{Hosts: []string{"A.example.com"}, Secret: "exact"}),
				secret("b/exact", exact), secret("z/exact", other),
			},
			want:     []string{"*:1/TLS a.example.com default/m 100 -> a:1"},
			problems: []string{"warning: TLSContext z/second: spec.hosts: host a.example.com is also listed by TLSContext b/first, which is used for it"},
			check:    wantTerm("*:1", "a.example.com", ref(config.KindTLSContext, "b/first"), exact),
		},
		{
			name: "a broken TLSContext listing the host does not shadow a usable one",
			in: []config.Resource{
				sni("m", 1, "a.example.com", "a:1"),
				tlsContext("a/broken", config.TLSContextSpec{Hosts: []string{"a.example.com"}, Secret: "missing"}),
				tlsContext("b/good", config.TLSContextSpec{Hosts: []string{"a.example.com"}, Secret: "exact"}),
				secret("b/exact", exact),
			},
			want: []string{"*:1/TLS a.example.com default/m 100 -> a:1"},
			problems: []string{
				"TLSContext a/broken: spec.hosts: cannot terminate TLS for host a.example.com: TLSContext a/broken spec.secret: Secret a/missing not found",
			},
			check: wantTerm("*:1", "a.example.com", ref(config.KindTLSContext, "b/good"), exact),
		},
		{
			name: "Host secret in another namespace",
			in: []config.Resource{
				sni("m", 1, "a.example.com", "a:1"),
				host("h", config.HostSpec{Hostname: "a.example.com", TLSSecret: &config.SecretRef{Name: "exact", Namespace: "certs"}}),
				secret("certs/exact", exact),
			},
			want:  []string{"*:1/TLS a.example.com default/m 100 -> a:1"},
			check: wantTerm("*:1", "a.example.com", ref(config.KindHost, "h"), exact),
		},
		{
			name: "missing and broken secrets",
			in: []config.Resource{
				sni("ctx-missing", 1, "a.example.com", "a:1"),
				sni("host-missing", 1, "b.example.com", "a:1"),
				sni("ca-only", 1, "c.example.com", "a:1"),
				sni("mismatched", 1, "d.example.com", "a:1"),
				sni("no-secret", 1, "e.example.com", "a:1"),
				tlsContext("ctx", config.TLSContextSpec{Hosts: []string{"a.example.com"}, Secret: "missing"}),
				host("hb", config.HostSpec{Hostname: "b.example.com", TLSSecret: &config.SecretRef{Name: "gone"}}),
				host("hc", config.HostSpec{Hostname: "c.example.com", TLSSecret: &config.SecretRef{Name: "ca"}}),
				host("hd", config.HostSpec{Hostname: "d.example.com", TLSSecret: &config.SecretRef{Name: "mismatched"}}),
				tlsContext("nosecret", config.TLSContextSpec{Hosts: []string{"e.example.com"}}),
				caSecret("ca", ca, "tls.crt"), secret("mismatched", mismatched),
			},
			problems: []string{
				"TCPMapping default/ctx-missing: spec.host: TLSContext default/ctx spec.secret: Secret default/missing not found",
				"TCPMapping default/host-missing: spec.host: Host default/hb spec.tlsSecret: Secret default/gone not found",
				"TCPMapping default/ca-only: spec.host: Host default/hc spec.tlsSecret: Secret default/ca: no tls.key",
				"TCPMapping default/mismatched: spec.host: Host default/hd spec.tlsSecret: Secret default/mismatched: tls.crt/tls.key:",
				"TCPMapping default/no-secret: spec.host: TLSContext default/nosecret spec.secret: lists host e.example.com but has no certificate",
			},
		},
		{
			name: "client certificate validation",
			in: []config.Resource{
				sni("req", 1, "a.example.com", "a:1"),
				sni("opt", 1, "b.example.com", "a:1"),
				sni("noca", 1, "c.example.com", "a:1"),
				tlsContext("req", config.TLSContextSpec{Hosts: []string{"a.example.com"}, Secret: "wild", CASecret: "clientca", CertRequired: ptr(true)}),
				tlsContext("opt", config.TLSContextSpec{Hosts: []string{"b.example.com"}, Secret: "wild", CASecret: "clientca-cacrt"}),
				tlsContext("noca", config.TLSContextSpec{Hosts: []string{"c.example.com"}, Secret: "wild", CertRequired: ptr(true)}),
				secret("wild", wild), caSecret("clientca", clientCA, "tls.crt"), caSecret("clientca-cacrt", clientCA, "ca.crt"),
			},
			want: []string{
				"*:1/TLS a.example.com default/req 100 -> a:1",
				"*:1/TLS b.example.com default/opt 100 -> a:1",
			},
			problems: []string{
				"TCPMapping default/noca: spec.host: TLSContext default/noca spec.cert_required: cert_required needs ca_secret or cacert_chain_file",
			},
			check: func(t *testing.T, s snapshot.Snapshot) {
				for h, required := range map[string]bool{"a.example.com": true, "b.example.com": false} {
					_, r := find(t, s, "*:1", h)
					if !bytes.Equal(r.Termination.ClientCAPEM, clientCA.CertPEM) || r.Termination.CertRequired != required {
						t.Errorf("%s: client CA set %v, cert_required %v; want CA and %v", h, r.Termination.ClientCAPEM != nil, r.Termination.CertRequired, required)
					}
				}
			},
		},
		{
			name: "Host tlsContext and inline tls parameters",
			in: []config.Resource{
				sni("viactx", 1, "a.example.com", "a:1"),
				sni("inline", 1, "b.example.com", "a:1"),
				sni("ctxcert", 1, "c.example.com", "a:1"),
				host("ha", config.HostSpec{Hostname: "a.example.com", TLSSecret: &config.SecretRef{Name: "wild"}, TLSContext: &config.NameRef{Name: "strict"}}),
				host("hb", config.HostSpec{Hostname: "b.example.com", TLSSecret: &config.SecretRef{Name: "wild"}, TLS: &config.HostTLS{
					ALPNProtocols: "h2, http/1.1", CipherSuites: []string{"ECDHE-ECDSA-AES128-GCM-SHA256"}, ECDHCurves: []string{"X25519"},
				}}),
				host("hc", config.HostSpec{Hostname: "c.example.com", TLSContext: &config.NameRef{Name: "strict"}}),
				tlsContext("strict", config.TLSContextSpec{Secret: "exact", MinTLSVersion: "v1.3"}),
				secret("wild", wild), secret("exact", exact),
			},
			want: []string{
				"*:1/TLS a.example.com default/viactx 100 -> a:1",
				"*:1/TLS b.example.com default/inline 100 -> a:1",
				"*:1/TLS c.example.com default/ctxcert 100 -> a:1",
			},
			check: func(t *testing.T, s snapshot.Snapshot) {
				wantTerm("*:1", "a.example.com", ref(config.KindHost, "ha"), wild)(t, s)
				wantTerm("*:1", "c.example.com", ref(config.KindHost, "hc"), exact)(t, s)
				if _, r := find(t, s, "*:1", "a.example.com"); r.Termination.MinVersion != tls.VersionTLS13 {
					t.Errorf("min version = %x, want TLS 1.3 from the Host's tlsContext", r.Termination.MinVersion)
				}
				_, r := find(t, s, "*:1", "b.example.com")
				want := snapshot.TLSParams{
					CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
					Curves:       []tls.CurveID{tls.X25519},
					ALPN:         []string{"h2", "http/1.1"},
				}
				if !reflect.DeepEqual(r.Termination.TLSParams, want) {
					t.Errorf("inline params = %+v, want %+v", r.Termination.TLSParams, want)
				}
			},
		},
		{
			name: "bad Hosts",
			in: []config.Resource{
				sni("both", 1, "a.example.com", "a:1"),
				sni("nockx", 1, "b.example.com", "a:1"),
				sni("badcipher", 1, "c.example.com", "a:1"),
				sni("weak", 1, "d.example.com", "a:1"),
				host("both", config.HostSpec{Hostname: "a.example.com", TLSSecret: &config.SecretRef{Name: "wild"}, TLSContext: &config.NameRef{Name: "x"}, TLS: &config.HostTLS{}}),
				host("nockx", config.HostSpec{Hostname: "b.example.com", TLSContext: &config.NameRef{Name: "absent"}}),
				host("badcipher", config.HostSpec{Hostname: "c.example.com", TLSSecret: &config.SecretRef{Name: "wild"}, TLS: &config.HostTLS{CipherSuites: []string{"NOPE"}}}),
				host("weak", config.HostSpec{Hostname: "d.example.com", TLSSecret: &config.SecretRef{Name: "wild"}, TLS: &config.HostTLS{CipherSuites: []string{"AES128-SHA"}}}),
				secret("wild", wild),
			},
			want: []string{"*:1/TLS d.example.com default/weak 100 -> a:1"},
			problems: []string{
				"Host default/both: spec.tls: tlsContext and tls cannot both be set",
				"TCPMapping default/both: spec.host: no Host or TLSContext provides TLS for host a.example.com",
				"TCPMapping default/nockx: spec.host: Host default/nockx spec.tlsContext: no TLSContext default/absent",
				`TCPMapping default/badcipher: spec.host: Host default/badcipher spec.tls.cipher_suites: unknown or unsupported cipher suite "NOPE"`,
				"warning: Host default/weak: spec.tls.cipher_suites: enables suites crypto/tls classes as insecure: TLS_RSA_WITH_AES_128_CBC_SHA",
			},
		},
		{
			name: "files and revocation lists",
			opts: Options{ReadFile: func(name string) ([]byte, error) {
				switch name {
				case "/certs/tls.crt":
					return exact.CertPEM, nil
				case "/certs/tls.key":
					return exact.KeyPEM, nil
				case "/certs/ca.crt":
					return clientCA.CertPEM, nil
				}
				return nil, fmt.Errorf("open %s: no such file", name)
			}},
			in: []config.Resource{
				sni("files", 1, "a.example.com", "a:1"),
				sni("halffile", 1, "b.example.com", "a:1"),
				sni("nofile", 1, "c.example.com", "a:1"),
				sni("crl", 1, "d.example.com", "a:1"),
				tlsContext("files", config.TLSContextSpec{Hosts: []string{"a.example.com"}, CertChainFile: "/certs/tls.crt", PrivateKeyFile: "/certs/tls.key", CACertChainFile: "/certs/ca.crt"}),
				tlsContext("halffile", config.TLSContextSpec{Hosts: []string{"b.example.com"}, CertChainFile: "/certs/tls.crt"}),
				tlsContext("nofile", config.TLSContextSpec{Hosts: []string{"c.example.com"}, CertChainFile: "/nope.crt", PrivateKeyFile: "/certs/tls.key"}),
				tlsContext("crl", config.TLSContextSpec{Hosts: []string{"d.example.com"}, Secret: "wild", CRLSecret: "crl"}),
				secret("wild", wild),
			},
			want: []string{"*:1/TLS a.example.com default/files 100 -> a:1"},
			problems: []string{
				"TCPMapping default/halffile: spec.host: TLSContext default/halffile spec.cert_chain_file: cert_chain_file needs private_key_file",
				"TCPMapping default/nofile: spec.host: TLSContext default/nofile spec.cert_chain_file: open /nope.crt: no such file",
				"TCPMapping default/crl: spec.host: TLSContext default/crl spec.crl_secret: certificate revocation lists are not supported",
			},
			check: func(t *testing.T, s snapshot.Snapshot) {
				wantTerm("*:1", "a.example.com", ref(config.KindTLSContext, "files"), exact)(t, s)
				if _, r := find(t, s, "*:1", "a.example.com"); !bytes.Equal(r.Termination.ClientCAPEM, clientCA.CertPEM) {
					t.Error("cacert_chain_file not used as client CA")
				}
			},
		},
	})
}

func TestOrigination(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	client := ca.Client(t, "tcpmap")
	orig := func(name string, p int64, ctx, svc string) config.Resource {
		return mapping(name, config.TCPMappingSpec{Port: port(p), Service: svc, TLS: &config.TLSRef{Context: ctx, Originate: true}})
	}
	// wantOrig checks mapping m's origination.
	wantOrig := func(m string, ctx *config.Ref, sni string, cert, root []byte) func(*testing.T, snapshot.Snapshot) {
		return func(t *testing.T, s snapshot.Snapshot) {
			t.Helper()
			o := backend(t, s, m).Origination
			if o == nil {
				t.Fatalf("%s does not originate TLS", m)
			}
			if !reflect.DeepEqual(o.Context, ctx) || o.ServerName != sni || !bytes.Equal(o.CertPEM, cert) || !bytes.Equal(o.RootCAPEM, root) {
				t.Errorf("%s origination = context %v, SNI %q, cert %v, CA %v; want %v, %q, %v, %v",
					m, o.Context, o.ServerName, o.CertPEM != nil, o.RootCAPEM != nil, ctx, sni, cert != nil, root != nil)
			}
			if _, err := tlsconfig.ClientConfig(o); err != nil {
				t.Errorf("ClientConfig: %v", err)
			}
		}
	}
	ctxRef := func(r string) *config.Ref { x := ref(config.KindTLSContext, r); return &x }
	runCases(t, []resolveCase{
		{
			name:  "plain https sends the host as SNI",
			in:    []config.Resource{tcp("m", 1, "https://db.internal:5432")},
			want:  []string{"*:1/TCP - default/m 100 -> db.internal:5432+tls"},
			check: wantOrig("default/m", nil, "db.internal", nil, nil),
		},
		{
			name:  "plain https to an IP literal sends no SNI",
			in:    []config.Resource{tcp("m", 1, "https://10.0.0.1")},
			want:  []string{"*:1/TCP - default/m 100 -> 10.0.0.1:443+tls"},
			check: wantOrig("default/m", nil, "", nil, nil),
		},
		{
			name: "context with only sni",
			in: []config.Resource{
				orig("m", 1, "sni-only", "10.0.0.1:8443"),
				tlsContext("sni-only", config.TLSContextSpec{SNI: "db.example.com"}),
			},
			want:  []string{"*:1/TCP - default/m 100 -> 10.0.0.1:8443+tls"},
			check: wantOrig("default/m", ctxRef("sni-only"), "db.example.com", nil, nil),
		},
		{
			name: "context in another namespace",
			in: []config.Resource{
				orig("m", 2, "origin", "db:1"),
				tlsContext("infra/origin", config.TLSContextSpec{Secret: "client", CASecret: "ca"}),
				secret("infra/client", client), caSecret("infra/ca", ca, "ca.crt"),
			},
			want:  []string{"*:2/TCP - default/m 100 -> db:1+tls"},
			check: wantOrig("default/m", ctxRef("infra/origin"), "db", client.CertPEM, ca.CertPEM),
		},
		{
			name: "name.namespace form and same-namespace preference",
			in: []config.Resource{
				orig("dotted", 3, "origin.infra", "db:1"),
				orig("same", 4, "origin", "db:1"),
				orig("app/other", 5, "origin", "db:1"),
				tlsContext("infra/origin", config.TLSContextSpec{SNI: "infra"}),
				tlsContext("default/origin", config.TLSContextSpec{SNI: "default"}),
			},
			want: []string{
				"*:3/TCP - default/dotted 100 -> db:1+tls",
				"*:4/TCP - default/same 100 -> db:1+tls",
			},
			problems: []string{
				// Two contexts named origin: from namespace app it is ambiguous.
				`TCPMapping app/other: spec.tls: TLSContext "origin" exists in several namespaces (default, infra) and none is app; write origin.NAMESPACE`,
			},
			check: func(t *testing.T, s snapshot.Snapshot) {
				wantOrig("default/dotted", ctxRef("infra/origin"), "infra", nil, nil)(t, s)
				wantOrig("default/same", ctxRef("default/origin"), "default", nil, nil)(t, s)
			},
		},
		{
			name: "ambiguous and missing contexts",
			in: []config.Resource{
				orig("ambiguous", 6, "origin", "db:1"),
				orig("missing", 7, "nothere", "db:2"),
				orig("missing-secret", 8, "badsecret", "db:3"),
				orig("missing-ca", 9, "badca", "db:4"),
				orig("badversion", 10, "badversion", "db:5"),
				tlsContext("a/origin", config.TLSContextSpec{}),
				tlsContext("b/origin", config.TLSContextSpec{}),
				tlsContext("badsecret", config.TLSContextSpec{Secret: "nosuch"}),
				tlsContext("badca", config.TLSContextSpec{CASecret: "nosuch.elsewhere"}),
				tlsContext("badversion", config.TLSContextSpec{MinTLSVersion: "v1.3", MaxTLSVersion: "v1.2"}),
			},
			problems: []string{
				`TCPMapping default/ambiguous: spec.tls: TLSContext "origin" exists in several namespaces (a, b) and none is default; write origin.NAMESPACE`,
				`TCPMapping default/missing: spec.tls: no TLSContext named "nothere"`,
				"TCPMapping default/missing-secret: spec.tls: TLSContext default/badsecret spec.secret: Secret default/nosuch not found",
				"TCPMapping default/missing-ca: spec.tls: TLSContext default/badca spec.ca_secret: Secret elsewhere/nosuch not found",
				"TCPMapping default/badversion: spec.tls: TLSContext default/badversion spec.min_tls_version: v1.3 is above max_tls_version v1.2",
			},
		},
		{
			name: "secret namespacing",
			in: []config.Resource{
				orig("ns", 11, "ns", "db:1"),
				orig("flat", 12, "flat", "db:2"),
				tlsContext("ns", config.TLSContextSpec{Secret: "client.certs"}),
				tlsContext("flat", config.TLSContextSpec{Secret: "client.certs", SecretNamespacing: ptr(false)}),
				secret("certs/client", client),
				secret("default/client.certs", client),
			},
			want: []string{"*:11/TCP - default/ns 100 -> db:1+tls", "*:12/TCP - default/flat 100 -> db:2+tls"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				wantOrig("default/ns", ctxRef("ns"), "db", client.CertPEM, nil)(t, s)
				wantOrig("default/flat", ctxRef("flat"), "db", client.CertPEM, nil)(t, s)
			},
		},
		{
			name: "parameters",
			in: []config.Resource{
				orig("m", 13, "params", "db:1"),
				tlsContext("params", config.TLSContextSpec{
					MinTLSVersion: "v1.2", MaxTLSVersion: "v1.3", ALPNProtocols: "postgresql",
					CipherSuites: []string{"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]", "TLS_AES_128_GCM_SHA256"},
					ECDHCurves:   []string{"P-256"},
				}),
			},
			want: []string{"*:13/TCP - default/m 100 -> db:1+tls"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				want := snapshot.TLSParams{
					MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS13,
					CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
					Curves:       []tls.CurveID{tls.CurveP256},
					ALPN:         []string{"postgresql"},
				}
				if got := backend(t, s, "default/m").Origination.TLSParams; !reflect.DeepEqual(got, want) {
					t.Errorf("params = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "termination and origination together",
			in: []config.Resource{
				sni("both", 1, "a.example.com", "https://db"),
				tlsContext("term", config.TLSContextSpec{Hosts: []string{"a.example.com"}, Secret: "server"}),
				secret("server", ca.Server(t, "a.example.com")),
			},
			want: []string{"*:1/TLS a.example.com default/both 100 -> db:443+tls"},
			check: func(t *testing.T, s snapshot.Snapshot) {
				l, r := find(t, s, "*:1", "a.example.com")
				if r.Termination == nil || l.SpliceEligible(&r.Backends[0]) {
					t.Error("want termination and no splice")
				}
				wantOrig("default/both", nil, "db", nil, nil)(t, s)
			},
		},
	})
}
