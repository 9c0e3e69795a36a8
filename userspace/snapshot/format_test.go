package snapshot

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func mref(ns, name string) config.Ref {
	return config.Ref{Kind: config.KindTCPMapping, Namespace: ns, Name: name}
}

// tableSnapshot covers every column variant: TCP and TLS listeners, PROXY,
// canary weights with and without a total of 100, origination with and
// without context, certificate and CA, send-proxy, idle timeouts.
func tableSnapshot() Snapshot {
	ctx := &config.Ref{Kind: config.KindTLSContext, Namespace: "infra", Name: "origin"}
	lsrc := &config.Ref{Kind: config.KindListener, Namespace: "default", Name: "tls-2222"}
	cb := CircuitBreaker{Priority: "default", MaxConnections: DefaultMaxConnections, MaxPendingRequests: DefaultMaxPendingRequests}
	return Snapshot{Listeners: []Listener{
		{
			Port: 2222, Protocol: ProtocolTCP,
			Routes: []Route{{
				ConnectTimeout: DefaultConnectTimeout, CircuitBreaker: cb,
				Backends: []Backend{
					{Mapping: mref("default", "ssh"), Weight: 70, Upstream: Upstream{Service: "upstream:22", Host: "upstream", Port: 22, EnableIPv4: true}},
					{Mapping: mref("default", "ssh-canary"), Weight: 30, Upstream: Upstream{Service: "canary:22", Host: "canary", Port: 22, EnableIPv4: true}},
				},
			}},
		},
		{
			Port: 2223, Protocol: ProtocolTCP, ProxyProtocol: true,
			Routes: []Route{{
				IdleTimeout: 90 * time.Second, ConnectTimeout: 1500 * time.Millisecond,
				CircuitBreaker: CircuitBreaker{Priority: "default", MaxConnections: 10, MaxPendingRequests: 1},
				Backends: []Backend{{
					Mapping: mref("db", "pg"), Weight: 100, SendProxyProtocol: 2,
					Upstream:    Upstream{Service: "https://[fd00::5]", Host: "fd00::5", Port: 443, EnableIPv6: true},
					Origination: &TLSClient{},
				}},
			}},
		},
		{
			Port: 8443, Protocol: ProtocolTLS, Source: lsrc,
			Routes: []Route{
				{
					Host: "db.example.com", ConnectTimeout: DefaultConnectTimeout, CircuitBreaker: cb,
					Termination: &TLSServer{Source: config.Ref{Kind: config.KindHost, Namespace: "default", Name: "db"}},
					Backends: []Backend{
						{
							Mapping: mref("db", "db-a"), Weight: 50,
							Upstream:    Upstream{Service: "https://db-a:5432", Host: "db-a", Port: 5432, EnableIPv4: true},
							Origination: &TLSClient{Context: ctx, ServerName: "db.internal", CertPEM: []byte("x"), RootCAPEM: []byte("y")},
						},
						{
							Mapping: mref("db", "db-b"), Weight: 25,
							Upstream: Upstream{Service: "db-b:5432", Host: "db-b", Port: 5432, EnableIPv4: true},
						},
					},
				},
				{
					Host: "*.example.com", ConnectTimeout: DefaultConnectTimeout, CircuitBreaker: cb,
					Termination: &TLSServer{Source: config.Ref{Kind: config.KindTLSContext, Namespace: "default", Name: "wild"}},
					Backends: []Backend{{
						Mapping: mref("default", "wild"), Weight: 100,
						Upstream: Upstream{Service: "web", Host: "web.default.svc.cluster.local", Port: 80, EnableIPv4: true},
					}},
				},
			},
		},
		{
			Address: "127.0.0.1", Port: 9000, Protocol: ProtocolTCP,
			Routes: []Route{{
				ConnectTimeout: DefaultConnectTimeout, CircuitBreaker: cb,
				Backends: []Backend{{
					Mapping: mref("default", "local"), Weight: 100,
					Upstream:    Upstream{Service: "https://10.0.0.7:8443", Host: "10.0.0.7", Port: 8443, EnableIPv4: true},
					Origination: &TLSClient{Context: ctx, RootCAPEM: []byte("y")},
				}},
			}},
		},
	}}
}

func TestWriteTable(t *testing.T) {
	tests := []struct {
		golden string
		snap   Snapshot
	}{
		{"table.golden", tableSnapshot()},
		{"empty.golden", Snapshot{}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			var got bytes.Buffer
			if err := WriteTable(&got, tt.snap); err != nil {
				t.Fatalf("WriteTable: %v", err)
			}
			path := filepath.Join("testdata", tt.golden)
			if *update {
				if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file (run with -update to create it): %v", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("WriteTable output differs from %s (run with -update if intended)\ngot:\n%s\nwant:\n%s", path, got.Bytes(), want)
			}
			// Deterministic: a second rendering is byte for byte the same.
			var again bytes.Buffer
			if err := WriteTable(&again, tt.snap); err != nil || !bytes.Equal(again.Bytes(), got.Bytes()) {
				t.Errorf("second rendering differs (err %v)", err)
			}
		})
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, os.ErrClosed }

func TestWriteTableError(t *testing.T) {
	if err := WriteTable(failWriter{}, tableSnapshot()); err == nil {
		t.Error("WriteTable to a failing writer returned nil")
	}
}
