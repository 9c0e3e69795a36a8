package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/internal/testutil"
	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/manager"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/store"
	"github.com/tcpmap/tcpmap/userspace/upstream"
)

type fakeStatus struct{}

func (fakeStatus) Status() api.Status      { return api.Status{Datapath: "userspace"} }
func (fakeStatus) Conns(string) []api.Conn { return nil }

// daemon serves the admin API of a manager over one config file holding
// TCPMapping default/ssh; it returns the socket and the file.
func daemon(t *testing.T) (sock, file string) {
	t.Helper()
	dir := t.TempDir()
	file = filepath.Join(dir, "ssh.yaml")
	conf := fmt.Sprintf("apiVersion: getambassador.io/v3alpha1\nkind: TCPMapping\nmetadata: {name: ssh}\nspec: {address: 127.0.0.1, port: %d, service: 127.0.0.1:22}\n", testutil.FreePort(t))
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	m := manager.New(manager.Options{
		ConfigPaths:  []string{file},
		Store:        store.New(filepath.Join(dir, "state")),
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
	sock = filepath.Join(dir, "tcpmapd.sock")
	s := api.NewServer(fakeStatus{}, zap.NewNop(), api.WithObjects(m))
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
	return sock, file
}

func TestAddListRemove(t *testing.T) {
	sock, file := daemon(t)
	port := strconv.Itoa(testutil.FreePort(t))
	tests := []struct {
		args    []string
		want    int
		out     string // in stdout
		errText string // in the error
	}{
		{args: []string{"add", "web", "--port", port, "--service", "127.0.0.1:80", "--address", "127.0.0.1", "--weight", "100"}, want: exitOK, out: "TCPMapping default/web created"},
		{args: []string{"list"}, want: exitOK, out: "TCPMapping  default    web   " + port},
		{args: []string{"list", "-o", "json"}, want: exitOK, out: `"source": "api"`},
		{args: []string{"get", "web", "-o", "yaml"}, want: exitOK, out: "service: 127.0.0.1:80"},
		{args: []string{"get", "default/nope"}, want: exitRejected, errText: "not found"},
		{args: []string{"add", "bad", "--port", "70000", "--service", "x:1"}, want: exitRejected, out: "spec.port", errText: "nothing applied"},
		{args: []string{"add", "web", "--service", "x:1"}, want: exitUsage, errText: "--port"},
		{args: []string{"list", "--port", "1"}, want: exitUsage, errText: "not a flag of list"},
		{args: []string{"remove", "ssh"}, want: exitRejected, errText: file + ":1; edit that file instead"},
		{args: []string{"remove", "nope"}, want: exitRejected, errText: "not found"},
		{args: []string{"remove", "web"}, want: exitOK, out: "TCPMapping default/web removed"},
		{args: []string{"get", "web"}, want: exitRejected, errText: "not found"},
		{args: []string{"remove"}, want: exitUsage, errText: "argument"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		args := append([]string{"--socket", sock}, tt.args...)
		got, err := run(args, strings.NewReader(""), &out)
		if got != tt.want {
			t.Errorf("tcpmapctl %v: exit %d (%v), want %d; output:\n%s", tt.args, got, err, tt.want, out.String())
		}
		if !strings.Contains(out.String(), tt.out) {
			t.Errorf("tcpmapctl %v: output %q, want it to contain %q", tt.args, out.String(), tt.out)
		}
		if tt.errText != "" && (err == nil || !strings.Contains(err.Error(), tt.errText)) {
			t.Errorf("tcpmapctl %v: error %v, want it to contain %q", tt.args, err, tt.errText)
		}
		if tt.errText == "" && err != nil {
			t.Errorf("tcpmapctl %v: error %v", tt.args, err)
		}
	}
}

func TestApplyFromStdin(t *testing.T) {
	sock, _ := daemon(t)
	doc := fmt.Sprintf("apiVersion: getambassador.io/v3alpha1\nkind: TCPMapping\nmetadata: {name: db, namespace: ops}\nspec: {address: 127.0.0.1, port: %d, service: db:5432}\n", testutil.FreePort(t))
	var out bytes.Buffer
	code, err := run([]string{"--socket", sock, "apply", "-f", "-"}, strings.NewReader(doc), &out)
	if code != exitOK || err != nil || !strings.Contains(out.String(), "TCPMapping ops/db created") {
		t.Fatalf("apply -f -: exit %d, %v, output %q", code, err, out.String())
	}
}

func TestCheckIsOffline(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("apiVersion: getambassador.io/v3alpha1\nkind: TCPMapping\nmetadata: {name: a}\nspec: {port: 2222, service: x:22}\n"), 0o600)
	os.WriteFile(bad, []byte("apiVersion: getambassador.io/v3alpha1\nkind: TCPMapping\nmetadata: {name: b}\nspec: {port: 0, service: x:22}\n"), 0o600)
	nobody := filepath.Join(dir, "nobody.sock")
	tests := []struct {
		file string
		want int
		out  string
	}{
		{good, exitOK, "1 object(s), 1 listener(s), 0 error(s)"},
		{bad, exitRejected, "error: TCPMapping default/b: spec.port"},
		{filepath.Join(dir, "missing.yaml"), exitRejected, "no such file"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		code, err := run([]string{"--socket", nobody, "check", "-f", tt.file}, strings.NewReader(""), &out)
		if code != tt.want || !strings.Contains(out.String(), tt.out) {
			t.Errorf("check -f %s: exit %d (%v), output %q; want %d with %q", tt.file, code, err, out.String(), tt.want, tt.out)
		}
	}
}

func TestObjectCommandsUnreachable(t *testing.T) {
	nobody := filepath.Join(t.TempDir(), "nobody.sock")
	for _, args := range [][]string{{"list"}, {"get", "x"}, {"remove", "x"}, {"add", "x", "--port", "1", "--service", "y:1"}} {
		var out bytes.Buffer
		code, err := run(append([]string{"--socket", nobody, "--timeout", "2s"}, args...), strings.NewReader(""), &out)
		if code != exitUnreachable || err == nil {
			t.Errorf("tcpmapctl %v: exit %d (%v), want %d", args, code, err, exitUnreachable)
		}
	}
}
