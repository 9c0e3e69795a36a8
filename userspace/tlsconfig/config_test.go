package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

// handshake runs both sides of a TLS handshake over an in-memory pipe with
// a deadline, and returns each side's error and the client's state.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error, cs tls.ConnectionState, ss tls.ConnectionState) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	deadline := time.Now().Add(5 * time.Second)
	_ = a.SetDeadline(deadline)
	_ = b.SetDeadline(deadline)
	srv := tls.Server(a, server)
	cli := tls.Client(b, client)
	done := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err != nil {
			a.Close() // unblock the client
		}
		done <- err
	}()
	clientErr = cli.Handshake()
	if clientErr != nil {
		b.Close()
	}
	// Keep reading on the client side: net.Pipe does not buffer, and a TLS
	// 1.3 server writes session tickets, or an alert after verifying the
	// client certificate, once the client considers the handshake done.
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		if clientErr == nil {
			_, _ = cli.Read(make([]byte, 1))
		}
	}()
	serverErr = <-done
	if clientErr == nil && serverErr == nil {
		ss = srv.ConnectionState()
	}
	a.Close()
	b.Close()
	<-readDone
	return serverErr, clientErr, cli.ConnectionState(), ss
}

func TestServerConfig(t *testing.T) {
	ca := tlstest.NewCA(t, "server-ca")
	clientCA := tlstest.NewCA(t, "client-ca")
	otherCA := tlstest.NewCA(t, "other-ca")
	srvPair := ca.Server(t, "tcp.example.com")
	goodClient := clientCA.Client(t, "good")
	badClient := otherCA.Client(t, "bad")
	src := config.Ref{Kind: config.KindTLSContext, Namespace: "default", Name: "term"}

	clientWith := func(p *tlstest.Pair) *tls.Config {
		c := &tls.Config{ServerName: "tcp.example.com", RootCAs: mustPool(t, ca.CertPEM)}
		if p != nil {
			cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
			if err != nil {
				t.Fatal(err)
			}
			// Offer the certificate even when the server names other CAs.
			c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		}
		return c
	}
	tests := []struct {
		name       string
		server     snapshot.TLSServer
		client     *tlstest.Pair
		wantAuth   tls.ClientAuthType
		wantFail   bool
		wantPeerCN string
	}{
		{name: "plain", server: snapshot.TLSServer{Source: src, CertPEM: srvPair.CertPEM, KeyPEM: srvPair.KeyPEM}, wantAuth: tls.NoClientCert},
		{
			name:     "required, no client cert",
			server:   snapshot.TLSServer{Source: src, CertPEM: srvPair.CertPEM, KeyPEM: srvPair.KeyPEM, ClientCAPEM: clientCA.CertPEM, CertRequired: true},
			wantAuth: tls.RequireAndVerifyClientCert, wantFail: true,
		},
		{
			name:     "required, good client cert",
			server:   snapshot.TLSServer{Source: src, CertPEM: srvPair.CertPEM, KeyPEM: srvPair.KeyPEM, ClientCAPEM: clientCA.CertPEM, CertRequired: true},
			client:   &goodClient,
			wantAuth: tls.RequireAndVerifyClientCert, wantPeerCN: "good",
		},
		{
			name:     "optional, no client cert",
			server:   snapshot.TLSServer{Source: src, CertPEM: srvPair.CertPEM, KeyPEM: srvPair.KeyPEM, ClientCAPEM: clientCA.CertPEM},
			wantAuth: tls.VerifyClientCertIfGiven,
		},
		{
			name:     "optional, client cert from another CA",
			server:   snapshot.TLSServer{Source: src, CertPEM: srvPair.CertPEM, KeyPEM: srvPair.KeyPEM, ClientCAPEM: clientCA.CertPEM},
			client:   &badClient,
			wantAuth: tls.VerifyClientCertIfGiven, wantFail: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ServerConfig(&tt.server)
			if err != nil {
				t.Fatalf("ServerConfig: %v", err)
			}
			if cfg.ClientAuth != tt.wantAuth {
				t.Errorf("ClientAuth = %v, want %v", cfg.ClientAuth, tt.wantAuth)
			}
			serr, cerr, _, ss := handshake(t, cfg, clientWith(tt.client))
			if failed := serr != nil || cerr != nil; failed != tt.wantFail {
				t.Fatalf("handshake server err %v, client err %v; want failure %v", serr, cerr, tt.wantFail)
			}
			if tt.wantPeerCN != "" {
				if len(ss.PeerCertificates) == 0 || ss.PeerCertificates[0].Subject.CommonName != tt.wantPeerCN {
					t.Errorf("server saw peer %v, want CN %q", ss.PeerCertificates, tt.wantPeerCN)
				}
			}
		})
	}
}

func TestServerConfigErrors(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	p := ca.Server(t, "a.example.com")
	other := ca.Server(t, "b.example.com")
	src := config.Ref{Kind: config.KindHost, Namespace: "ns", Name: "h"}
	tests := []struct {
		name    string
		in      *snapshot.TLSServer
		wantErr string
	}{
		{"nil", nil, "no server TLS"},
		{"no cert", &snapshot.TLSServer{Source: src}, "Host ns/h: no server certificate"},
		{"mismatched key", &snapshot.TLSServer{Source: src, CertPEM: p.CertPEM, KeyPEM: other.KeyPEM}, "Host ns/h: server certificate"},
		{"cert required without CA", &snapshot.TLSServer{Source: src, CertPEM: p.CertPEM, KeyPEM: p.KeyPEM, CertRequired: true}, "cert_required without a CA"},
		{"bad CA", &snapshot.TLSServer{Source: src, CertPEM: p.CertPEM, KeyPEM: p.KeyPEM, ClientCAPEM: []byte("junk")}, "client CA"},
	}
	for _, tt := range tests {
		_, err := ServerConfig(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: error = %v, want containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestServerConfigParams(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	p := ca.Server(t, "a.example.com")
	params := snapshot.TLSParams{
		MinVersion:   tls.VersionTLS12,
		MaxVersion:   tls.VersionTLS13,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		Curves:       []tls.CurveID{tls.X25519, tls.CurveP256},
		ALPN:         []string{"h2", "http/1.1"},
	}
	cfg, err := ServerConfig(&snapshot.TLSServer{CertPEM: p.CertPEM, KeyPEM: p.KeyPEM, TLSParams: params})
	if err != nil {
		t.Fatal(err)
	}
	got := snapshot.TLSParams{MinVersion: cfg.MinVersion, MaxVersion: cfg.MaxVersion, CipherSuites: cfg.CipherSuites, Curves: cfg.CurvePreferences, ALPN: cfg.NextProtos}
	if !reflect.DeepEqual(got, params) {
		t.Errorf("params = %+v, want %+v", got, params)
	}
	client := &tls.Config{RootCAs: mustPool(t, ca.CertPEM), ServerName: "a.example.com", NextProtos: []string{"http/1.1"}}
	serr, cerr, cs, _ := handshake(t, cfg, client)
	if serr != nil || cerr != nil {
		t.Fatalf("handshake: server %v, client %v", serr, cerr)
	}
	if cs.NegotiatedProtocol != "http/1.1" {
		t.Errorf("ALPN = %q, want http/1.1", cs.NegotiatedProtocol)
	}

	// A client limited to TLS 1.2 cannot reach a TLS 1.3-only server.
	cfg13, err := ServerConfig(&snapshot.TLSServer{CertPEM: p.CertPEM, KeyPEM: p.KeyPEM, TLSParams: snapshot.TLSParams{MinVersion: tls.VersionTLS13}})
	if err != nil {
		t.Fatal(err)
	}
	client12 := &tls.Config{RootCAs: mustPool(t, ca.CertPEM), ServerName: "a.example.com", MaxVersion: tls.VersionTLS12}
	if serr, cerr, _, _ := handshake(t, cfg13, client12); serr == nil && cerr == nil {
		t.Error("TLS 1.2 client reached a min_tls_version v1.3 server")
	}
}

func TestClientConfig(t *testing.T) {
	ca := tlstest.NewCA(t, "upstream-ca")
	otherCA := tlstest.NewCA(t, "other-ca")
	clientCA := tlstest.NewCA(t, "client-ca")
	upstream := ca.Server(t, "db.internal", "127.0.0.1")
	impostor := otherCA.Server(t, "db.internal", "127.0.0.1")
	clientPair := clientCA.Client(t, "tcpmap")
	ctx := &config.Ref{Kind: config.KindTLSContext, Namespace: "default", Name: "origin"}

	serverFor := func(p tlstest.Pair) *tls.Config {
		cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    mustPool(t, clientCA.CertPEM),
		}
	}
	tests := []struct {
		name         string
		client       snapshot.TLSClient
		upstream     tlstest.Pair
		wantInsecure bool
		wantFail     bool
		wantSNI      string
		wantPeerCN   string
	}{
		{name: "no CA skips verification", client: snapshot.TLSClient{ServerName: "db.internal"}, upstream: impostor, wantInsecure: true, wantSNI: "db.internal"},
		{name: "CA and name verify", client: snapshot.TLSClient{Context: ctx, ServerName: "db.internal", RootCAPEM: ca.CertPEM}, upstream: upstream, wantSNI: "db.internal"},
		{name: "CA rejects impostor", client: snapshot.TLSClient{Context: ctx, ServerName: "db.internal", RootCAPEM: ca.CertPEM}, upstream: impostor, wantFail: true},
		{name: "CA rejects wrong name", client: snapshot.TLSClient{Context: ctx, ServerName: "other.internal", RootCAPEM: ca.CertPEM}, upstream: upstream, wantFail: true},
		{name: "CA without name verifies chain", client: snapshot.TLSClient{Context: ctx, RootCAPEM: ca.CertPEM}, upstream: upstream, wantInsecure: true},
		{name: "CA without name rejects impostor", client: snapshot.TLSClient{Context: ctx, RootCAPEM: ca.CertPEM}, upstream: impostor, wantInsecure: true, wantFail: true},
		{
			name:     "client certificate",
			client:   snapshot.TLSClient{Context: ctx, ServerName: "db.internal", CertPEM: clientPair.CertPEM, KeyPEM: clientPair.KeyPEM},
			upstream: upstream, wantInsecure: true, wantSNI: "db.internal", wantPeerCN: "tcpmap",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ClientConfig(&tt.client)
			if err != nil {
				t.Fatalf("ClientConfig: %v", err)
			}
			if cfg.InsecureSkipVerify != tt.wantInsecure {
				t.Errorf("InsecureSkipVerify = %v, want %v", cfg.InsecureSkipVerify, tt.wantInsecure)
			}
			srv := serverFor(tt.upstream)
			var sawSNI string
			srv.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				sawSNI = h.ServerName
				return nil, nil
			}
			serr, cerr, _, ss := handshake(t, srv, cfg)
			if failed := serr != nil || cerr != nil; failed != tt.wantFail {
				t.Fatalf("handshake server err %v, client err %v; want failure %v", serr, cerr, tt.wantFail)
			}
			if tt.wantFail {
				return
			}
			if sawSNI != tt.wantSNI {
				t.Errorf("upstream saw SNI %q, want %q", sawSNI, tt.wantSNI)
			}
			gotCN := ""
			if len(ss.PeerCertificates) > 0 {
				gotCN = ss.PeerCertificates[0].Subject.CommonName
			}
			if gotCN != tt.wantPeerCN {
				t.Errorf("upstream saw client cert CN %q, want %q", gotCN, tt.wantPeerCN)
			}
		})
	}
}

func TestClientConfigErrors(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	p := ca.Client(t, "c")
	q := ca.Client(t, "d")
	ctx := &config.Ref{Kind: config.KindTLSContext, Namespace: "ns", Name: "origin"}
	tests := []struct {
		name    string
		in      *snapshot.TLSClient
		wantErr string
	}{
		{"nil", nil, "no client TLS"},
		{"key without cert", &snapshot.TLSClient{Context: ctx, KeyPEM: p.KeyPEM}, "TLSContext ns/origin: client certificate"},
		{"mismatched key", &snapshot.TLSClient{Context: ctx, CertPEM: p.CertPEM, KeyPEM: q.KeyPEM}, "client certificate"},
		{"bad CA", &snapshot.TLSClient{RootCAPEM: []byte("junk")}, "https upstream: upstream CA"},
	}
	for _, tt := range tests {
		_, err := ClientConfig(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: error = %v, want containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func mustPool(t *testing.T, pemData []byte) *x509.CertPool {
	t.Helper()
	p, err := certPool(pemData)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
