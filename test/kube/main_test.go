package kube

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildTimeout covers a cold build of kube-apiserver (about ten minutes on
// two cores) with room to spare.
const buildTimeout = 25 * time.Minute

var (
	// serverBin holds kube-apiserver and etcd.
	serverBin string
	// tcpmapdBin and tcpmapctlBin are the binaries under test.
	tcpmapdBin, tcpmapctlBin string
	// setupErr says why the binaries are missing; every test reports it.
	setupErr error
	// skipReason, when set, skips every test (fails under CI=true).
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	switch {
	case os.Geteuid() != 0:
		skipReason = "the Kubernetes e2e test needs root (it caches kube-apiserver under /var/cache/tcpmap); run: sudo -E go test -timeout 40m ./test/kube"
	default:
		if _, err := exec.LookPath("go"); err != nil {
			skipReason = "the Kubernetes e2e test needs go on PATH to build kube-apiserver and etcd"
		}
	}
	if skipReason == "" {
		dir, err := os.MkdirTemp("", "tcpmap-kube-bin-")
		if err != nil {
			setupErr = err
		} else {
			defer os.RemoveAll(dir)
			setupErr = setup(dir)
		}
	}
	return m.Run()
}

func setup(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join("apiserver", "build.sh"))
	cmd.Stderr = os.Stderr // the build's progress, and its timings
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("apiserver/build.sh (after %s): %w", time.Since(start).Round(time.Second), err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	serverBin = lines[len(lines)-1]
	fmt.Fprintf(os.Stderr, "kube-apiserver and etcd in %s (%s)\n", serverBin, time.Since(start).Round(time.Second))
	for _, b := range []struct {
		out *string
		pkg string
	}{{&tcpmapdBin, "cmd/tcpmapd"}, {&tcpmapctlBin, "cmd/tcpmapctl"}} {
		*b.out = filepath.Join(dir, filepath.Base(b.pkg))
		c := exec.CommandContext(ctx, "go", "build", "-o", *b.out, "github.com/tcpmap/tcpmap/"+b.pkg)
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./%s: %w\n%s", b.pkg, err, out)
		}
	}
	return nil
}

// requireSetup skips (or under CI=true fails) a test that cannot run here,
// and fails one whose binaries could not be built.
func requireSetup(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(skipReason + "; CI=true, so a skip counts as a failure")
		}
		t.Skip(skipReason)
	}
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

// testContext is a context that ends at d or at the test's deadline.
func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	if dl, ok := t.Deadline(); ok && time.Until(dl)-5*time.Second < d {
		d = time.Until(dl) - 5*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
