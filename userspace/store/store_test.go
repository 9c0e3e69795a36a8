package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
)

const sshYAML = `apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: ssh
  namespace: ops
spec:
  port: 2222
  service: 127.0.0.1:22
`

func ref(kind, ns, name string) config.Ref { return config.Ref{Kind: kind, Namespace: ns, Name: name} }

func TestRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "objects") // created on first Put
	s := New(dir)
	if entries, probs := s.Load(); len(entries) != 0 || len(probs) != 0 {
		t.Fatalf("empty store Load = %v, %v", entries, probs)
	}
	r := ref(config.KindTCPMapping, "ops", "ssh")
	if err := s.Put(r, []byte(sshYAML)); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v, %v; want mode 0700", fi, err)
	}

	entries, probs := New(dir).Load() // a fresh store, as after a restart
	if len(probs) != 0 || len(entries) != 1 {
		t.Fatalf("Load = %d entries, %v", len(entries), probs)
	}
	e := entries[0]
	if e.Resource.Ref != r || e.Resource.Origin != (config.Origin{Source: Source}) || e.Resource.TCPMapping.Port.Value != 2222 {
		t.Errorf("entry = %+v", e.Resource)
	}
	if string(e.Data) != sshYAML {
		t.Errorf("data = %q, want %q", e.Data, sshYAML)
	}
	if got, ok := s.Get(r); !ok || string(got) != sshYAML {
		t.Errorf("Get = %q, %v", got, ok)
	}

	gone, err := s.Delete(r)
	if err != nil || !gone {
		t.Fatalf("Delete = %v, %v", gone, err)
	}
	if gone, err := s.Delete(r); err != nil || gone {
		t.Fatalf("second Delete = %v, %v; want false, nil", gone, err)
	}
	if entries, _ := s.Load(); len(entries) != 0 {
		t.Fatalf("after Delete: %d entries", len(entries))
	}
}

func TestPutIsAtomicAndLeavesNoTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	r := ref(config.KindTCPMapping, "ops", "ssh")
	if err := s.Put(r, []byte(sshYAML)); err != nil {
		t.Fatal(err)
	}
	replaced := strings.Replace(sshYAML, "2222", "2223", 1)
	if err := s.Put(r, []byte(replaced)); err != nil {
		t.Fatal(err)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(names) != 1 || filepath.Base(names[0]) != "TCPMapping_ops_ssh.yaml" {
		t.Errorf("files = %v, want only TCPMapping_ops_ssh.yaml", names)
	}
	// A temporary file a crash left behind is never read as an object.
	if err := os.WriteFile(filepath.Join(dir, tmpPrefix+"123"), []byte("half a docu"), 0o600); err != nil {
		t.Fatal(err)
	}
	entries, probs := s.Load()
	if len(probs) != 0 || len(entries) != 1 || entries[0].Resource.TCPMapping.Port.Value != 2223 {
		t.Fatalf("Load = %+v, %v; want the replaced object", entries, probs)
	}

	// A directory the store cannot write to leaves the old object whole.
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(dir, 0o700)
		if err := s.Put(r, []byte(sshYAML)); err == nil {
			t.Fatal("Put into a read-only directory succeeded")
		}
		if data, _ := s.Get(r); string(data) != replaced {
			t.Errorf("after a failed Put: %q, want the previous object", data)
		}
	}
}

func TestCorruptFilesAreProblemsNotFatal(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	good := ref(config.KindTCPMapping, "ops", "ssh")
	if err := s.Put(good, []byte(sshYAML)); err != nil {
		t.Fatal(err)
	}
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("TCPMapping_ops_broken.yaml", "apiVersion: [unclosed\n")
	write("TCPMapping_ops_other.yaml", sshYAML) // holds ssh, named other
	write("TCPMapping_ops_bad.yaml", strings.Replace(strings.Replace(sshYAML, "ssh", "bad", 1), "2222", "99999", 1))

	entries, probs := s.Load()
	if len(entries) != 1 || entries[0].Resource.Ref != good {
		t.Errorf("entries = %+v, want only %s", entries, good)
	}
	want := map[string]string{
		"TCPMapping_ops_broken.yaml": "YAML does not parse",
		"TCPMapping_ops_other.yaml":  "whose file would be TCPMapping_ops_ssh.yaml",
		"TCPMapping_ops_bad.yaml":    "spec.port",
	}
	for _, p := range probs {
		base := filepath.Base(p.Origin.File)
		if sub, ok := want[base]; ok && strings.Contains(p.Error(), sub) {
			delete(want, base)
		}
	}
	if len(want) != 0 {
		t.Errorf("missing problems %v in %v", want, probs)
	}
}

func TestLoadOrderIsOldestFirst(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	a, b := ref(config.KindTCPMapping, "default", "a"), ref(config.KindTCPMapping, "default", "b")
	for _, r := range []config.Ref{b, a} {
		doc := strings.NewReplacer("ssh", r.Name, "ops", r.Namespace).Replace(sshYAML)
		if err := s.Put(r, []byte(doc)); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(dir, FileName(b)), old, old); err != nil {
		t.Fatal(err)
	}
	entries, _ := s.Load()
	if len(entries) != 2 || entries[0].Resource.Ref != b || entries[1].Resource.Ref != a {
		t.Fatalf("order = %v, want b (older) then a", entries)
	}
}

func TestFileName(t *testing.T) {
	tests := []struct {
		ref  config.Ref
		want string
	}{
		{ref("TCPMapping", "default", "ssh.v2"), "TCPMapping_default_ssh.v2.yaml"},
		{ref("TCPMapping", "a_b", "../x"), "TCPMapping_a%5Fb_..%2Fx.yaml"},
	}
	for _, tt := range tests {
		if got := FileName(tt.ref); got != tt.want {
			t.Errorf("FileName(%v) = %q, want %q", tt.ref, got, tt.want)
		}
	}
}

func TestSplit(t *testing.T) {
	stream := `{"apiVersion":"getambassador.io/v3alpha1","kind":"TCPMapping","metadata":{"name":"a"},"spec":{"port":1,"service":"x"}}
---
apiVersion: v1
kind: List
items:
- apiVersion: getambassador.io/v3alpha1
  kind: TCPMapping
  metadata: {name: b, namespace: ops}
  spec: {port: 2, service: "y:2"}
`
	docs, err := Split([]byte(stream))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 {
		t.Fatalf("Split = %d docs, want 2: %q", len(docs), docs)
	}
	for r, doc := range docs {
		rs, probs := config.LoadBytes("doc", doc, config.Origin{Source: Source})
		if len(probs) != 0 || len(rs) != 1 || rs[0].Ref != r {
			t.Errorf("doc of %s loads as %v, %v:\n%s", r, rs, probs, doc)
		}
		if strings.ContainsAny(string(doc), `{"`) {
			t.Errorf("doc of %s is in flow style or quoted:\n%s", r, doc)
		}
	}
}
