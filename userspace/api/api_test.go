package api

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
)

type fakeBackend struct{ conns []Conn }

func (f fakeBackend) Status() Status {
	return Status{Datapath: "userspace", DatapathReason: "test", Listeners: []Listener{{Key: "*:7000", Protocol: "TCP"}}}
}

func (f fakeBackend) Conns(mapping string) []Conn {
	var out []Conn
	for _, c := range f.conns {
		if mapping == "" || c.Mapping == mapping {
			out = append(out, c)
		}
	}
	return out
}

func serve(t *testing.T, path string, b Backend) {
	t.Helper()
	s := NewServer(b, zap.NewNop())
	if err := s.Listen(path); err != nil {
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
}

func TestStatusAndConnsOverTheSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "tcpmapd.sock")
	serve(t, path, fakeBackend{conns: []Conn{
		{Mapping: "default/a", Datapath: "kernel"}, {Mapping: "default/b", Datapath: "relay-copy"},
	}})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode = %v, want 0600", perm)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := NewClient(path)
	s, err := c.Status(ctx)
	if err != nil || s.Datapath != "userspace" || len(s.Listeners) != 1 || s.Listeners[0].Key != "*:7000" {
		t.Fatalf("Status = %+v, %v", s, err)
	}
	conns, err := c.Conns(ctx, "default/b")
	if err != nil || len(conns) != 1 || conns[0].Datapath != "relay-copy" {
		t.Fatalf("Conns(default/b) = %+v, %v", conns, err)
	}
	all, err := c.Conns(ctx, "")
	if err != nil || len(all) != 2 {
		t.Fatalf("Conns() = %+v, %v", all, err)
	}
}

func TestUnreachableDaemon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := NewClient(filepath.Join(t.TempDir(), "nobody.sock")).Status(ctx)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
}

func TestListenReplacesStaleSocketButNotALiveOne(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	// A crashed daemon leaves its socket file behind; nobody answers.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	serve(t, stale, fakeBackend{})

	live := filepath.Join(dir, "live.sock")
	serve(t, live, fakeBackend{})
	s := NewServer(fakeBackend{}, zap.NewNop())
	if err := s.Listen(live); err == nil {
		t.Fatal("Listen on a socket another daemon serves succeeded")
	}

	notSocket := filepath.Join(dir, "file")
	os.WriteFile(notSocket, nil, 0o600)
	if err := NewServer(fakeBackend{}, zap.NewNop()).Listen(notSocket); err == nil {
		t.Fatal("Listen over a regular file succeeded")
	}
}
