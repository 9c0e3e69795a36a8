package ctl

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/tcpmap/tcpmap/userspace/api"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}

var objects = []api.Object{
	{Kind: "Host", Namespace: "default", Name: "web", Source: "file:/etc/tcpmap/hosts.yaml:1",
		Object: []byte(`{"apiVersion":"getambassador.io/v3alpha1","kind":"Host","metadata":{"name":"web","namespace":"default"},"spec":{"hostname":"web.example.com","tlsSecret":{"name":"web-cert"}}}`)},
	{Kind: "Secret", Namespace: "default", Name: "web-cert", Source: "api",
		Object: []byte(`{"apiVersion":"v1","data":{"tls.crt":"(1200 bytes, not shown)"},"kind":"Secret","metadata":{"name":"web-cert","namespace":"default"},"type":"kubernetes.io/tls"}`)},
	{Kind: "TCPMapping", Namespace: "default", Name: "ssh", Source: "file:/etc/tcpmap/ssh.yaml:3",
		Object: []byte(`{"apiVersion":"getambassador.io/v3alpha1","kind":"TCPMapping","metadata":{"name":"ssh","namespace":"default"},"spec":{"port":2222,"service":"10.0.0.5:22"}}`)},
	{Kind: "TCPMapping", Namespace: "ops", Name: "db", Source: "api",
		Object: []byte(`{"apiVersion":"getambassador.io/v3alpha1","kind":"TCPMapping","metadata":{"name":"db","namespace":"ops"},"spec":{"host":"db.example.com","port":"8443","service":"db:5432","weight":20}}`)},
}

func TestListTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteObjects(&b, objects); err != nil {
		t.Fatal(err)
	}
	golden(t, "list", b.Bytes())
}

func TestListYAML(t *testing.T) {
	var b bytes.Buffer
	if err := WriteObjectsYAML(&b, objects); err != nil {
		t.Fatal(err)
	}
	golden(t, "list-yaml", b.Bytes())
}

func TestStatusTable(t *testing.T) {
	s := api.Status{
		Datapath:       "kernel+userspace",
		DatapathReason: "cleartext passthrough spliced by eBPF sockmap",
		BPF: &api.BPFStatus{PinDir: "/sys/fs/bpf/tcpmap", AttachMode: "bpf_link", Maps: []string{"listeners", "mappings", "pairs", "sock_hash"},
			Programs: []string{"splice_verdict", "steer_listener"}, Steering: "sk_lookup"},
		Kernel: &api.KernelStat{Pairs: 3},
		Listeners: []api.Listener{
			{Key: "*:2222", Protocol: "TCP", Active: 3, Accepted: 10, Mappings: []api.Mapping{
				{Name: "default/ssh", Active: 3, Total: 10, Spliced: 9, BytesToUpstream: 100, KernelBytesToUpstream: 2048, BytesToClient: 5 << 20,
					BPF: &api.MappingBPF{ID: 1, ListenerID: 1, Weight: 100, Upstream: "10.0.0.5:22", Flags: []string{"splice"}, Bytes: 2048 + 5<<20}},
			}, BPF: &api.ListenerBPF{ID: 1, Steered: true, Endpoints: []string{"0.0.0.0:2222", "[::]:2222"}, SteeredConnections: 10}},
			{Key: "127.0.0.1:8443", Protocol: "TLS", Proxy: true, Refusals: map[string]uint64{"unknown-sni": 2}, Mappings: []api.Mapping{
				{Name: "ops/db", Total: 4, Refusals: map[string]uint64{"dial": 1, "breaker": 3},
					BPF: &api.MappingBPF{ID: 2, ListenerID: 2, Weight: 20, Upstream: "db:5432", Flags: []string{"tls-terminate"}}},
			}, BPF: &api.ListenerBPF{ID: 2, Steered: true, Endpoints: []string{"127.0.0.1:8443"}, SteeredConnections: 6}},
			{Key: "*:9000", Protocol: "TCP"},
		},
		Problems: []api.Problem{
			{Level: "error", Message: "TCPMapping default/x: spec.port: port must be 1..65535, got 70000 (/etc/tcpmap/x.yaml:7)"},
			{Level: "warning", Message: "TLSContext ops/db: spec.min_tls_version: v1.0 is below v1.2 (kubernetes)"},
		},
		Resources: []api.Resource{
			{Kind: "TCPMapping", Namespace: "default", Name: "ssh", Source: "file:/etc/tcpmap/ssh.yaml:1", Outcome: "accepted"},
			{Kind: "TCPMapping", Namespace: "default", Name: "x", Source: "file:/etc/tcpmap/x.yaml:7", Outcome: "rejected",
				Errors: []string{"spec.port: port must be 1..65535, got 70000"}},
			{Kind: "TCPMapping", Namespace: "ops", Name: "db", Source: "api", Outcome: "accepted"},
			{Kind: "TCPMapping", Namespace: "ops", Name: "blue", Source: "kubernetes", Outcome: "ignored"},
			{Kind: "TLSContext", Namespace: "ops", Name: "db", Source: "kubernetes", Outcome: "accepted",
				Warnings: []string{"spec.min_tls_version: v1.0 is below v1.2"}},
		},
	}
	var b bytes.Buffer
	if err := WriteStatus(&b, s); err != nil {
		t.Fatal(err)
	}
	golden(t, "status", b.Bytes())
}
