package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReloadOnFileChange: with --watch, adding a mapping file to the config
// directory opens its listener without any signal, and deleting the file
// closes it again.
func TestReloadOnFileChange(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 7000, false)
	tp.serveEcho(t, "cockroach", 7001, false)
	dir := configDir(t, []string{"lifecycle/first.yaml"}, nil)
	tp.start(t, daemonArgs([]string{dir}, "--watch=true")...)

	b, err := os.ReadFile("testdata/lifecycle/added.yaml")
	if err != nil {
		t.Fatal(err)
	}
	added := filepath.Join(dir, "added.yaml")
	if err := os.WriteFile(added, b, 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := poll(ctx, 15*time.Second, func(ctx context.Context) (greeting, error) {
		return tp.reach(ctx, proxyAddr(7001))
	})
	if err != nil {
		t.Fatalf("port 7001 after the file was added: %v", err)
	}
	checkGreeting(t, "port 7001", g, want{upstream: "cockroach", port: 7001})

	if err := os.Remove(added); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "port 7001 to close after its file was removed", func() bool {
		c, err := tp.connect(ctx, proxyAddr(7001))
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
}
