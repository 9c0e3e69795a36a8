package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/internal/testutil"
	"github.com/tcpmap/tcpmap/userspace/manager"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/store"
	"github.com/tcpmap/tcpmap/userspace/upstream"
)

// node is a manager over one config file and a state dir, served on a
// unix socket.
type node struct {
	m      *manager.Manager
	client *Client
	file   string
	state  string
}

func startNode(t *testing.T, file, state string) *node {
	t.Helper()
	m := manager.New(manager.Options{
		ConfigPaths:  []string{file},
		Store:        store.New(state),
		Relay:        relay.Options{Dialer: upstream.NewDialer(upstream.Options{})},
		DrainTimeout: time.Second,
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	m.Reload()
	sock := filepath.Join(t.TempDir(), "tcpmapd.sock")
	s := NewServer(fakeBackend{}, zap.NewNop(), WithObjects(m))
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &node{m: m, client: NewClient(sock), file: file, state: state}
}

func newNode(t *testing.T) *node {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "ssh.yaml")
	if err := os.WriteFile(file, []byte(testutil.MappingYAML("ssh", testutil.FreePort(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	return startNode(t, file, filepath.Join(dir, "state"))
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func statusCode(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func TestApplyValidIsListedAndSurvivesRestart(t *testing.T) {
	n := newNode(t)
	res, err := n.client.Apply(ctx(t), "web.yaml", []byte(testutil.MappingYAML("web", testutil.FreePort(t))))
	if err != nil || len(res.Objects) != 1 || res.Objects[0] != (Change{Kind: "TCPMapping", Namespace: "default", Name: "web", Action: "created"}) {
		t.Fatalf("Apply = %+v, %v", res, err)
	}
	objs, err := n.client.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]string{}
	for _, o := range objs {
		sources[o.Name] = o.Source
	}
	if sources["web"] != "api" || sources["ssh"] != "file:"+n.file+":1" {
		t.Errorf("sources = %v, want web from api and ssh from the file", sources)
	}
	o, err := n.client.Get(ctx(t), "tcpmapping", "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Kind string
		Spec struct {
			Service string
		}
	}
	if err := json.Unmarshal(o.Object, &doc); err != nil || doc.Kind != "TCPMapping" || doc.Spec.Service != "127.0.0.1:9" {
		t.Errorf("Get object = %s, %v", o.Object, err)
	}
	if strings.Contains(string(o.Object), "null") {
		t.Errorf("object shows unset fields: %s", o.Object)
	}

	// A new manager and store on the same directories, as after a restart.
	again := startNode(t, n.file, n.state)
	if _, err := again.client.Get(ctx(t), "TCPMapping", "default", "web"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestApplyInvalidIsRejectedWhole(t *testing.T) {
	n := newNode(t)
	body := testutil.MappingYAML("good", testutil.FreePort(t)) + "---\n" + strings.Replace(testutil.MappingYAML("bad", 1), "port: 1", "port: 70000", 1)
	_, err := n.client.Apply(ctx(t), "two.yaml", []byte(body))
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnprocessableEntity {
		t.Fatalf("Apply = %v, want 422", err)
	}
	if len(se.Problems) != 1 || !strings.Contains(se.Problems[0].Message, "TCPMapping default/bad: spec.port") ||
		!strings.Contains(se.Problems[0].Message, "two.yaml:") {
		t.Errorf("problems = %+v, want one naming default/bad spec.port in two.yaml", se.Problems)
	}
	if _, err := n.client.Get(ctx(t), "TCPMapping", "default", "good"); statusCode(err) != http.StatusNotFound {
		t.Errorf("Get good after rejected apply: %v, want 404", err)
	}
	if names, _ := filepath.Glob(filepath.Join(n.state, "*")); len(names) != 0 {
		t.Errorf("state dir holds %v after a rejected apply", names)
	}
}

func TestDelete(t *testing.T) {
	n := newNode(t)
	_, err := n.client.Delete(ctx(t), "TCPMapping", "default", "ssh")
	want := "TCPMapping default/ssh comes from " + n.file + ":1; edit that file instead"
	if statusCode(err) != http.StatusConflict || err.Error() != want {
		t.Errorf("delete file object: %v, want 409 %q", err, want)
	}
	if _, err := n.client.Delete(ctx(t), "TCPMapping", "default", "nope"); statusCode(err) != http.StatusNotFound {
		t.Errorf("delete unknown: %v, want 404", err)
	}
	if _, err := n.client.Apply(ctx(t), "", []byte(testutil.MappingYAML("web", testutil.FreePort(t)))); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.Delete(ctx(t), "TCPMapping", "default", "web"); err != nil {
		t.Fatalf("delete applied object: %v", err)
	}
	if _, err := n.client.Get(ctx(t), "TCPMapping", "default", "web"); statusCode(err) != http.StatusNotFound {
		t.Errorf("Get after delete: %v, want 404", err)
	}
}

func TestProblems(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(file, []byte("kind: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, file, filepath.Join(dir, "state"))
	ps, err := n.client.Problems(ctx(t))
	if err != nil || len(ps) != 1 || ps[0].Level != "error" || !strings.Contains(ps[0].Message, file) {
		t.Fatalf("Problems = %+v, %v", ps, err)
	}
}

func TestObjectEndpointsWithoutObjects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcpmapd.sock")
	serve(t, path, fakeBackend{})
	_, err := NewClient(path).List(ctx(t))
	if statusCode(err) != http.StatusServiceUnavailable {
		t.Fatalf("List without objects: %v, want 503", err)
	}
}
