package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nsPrefix starts the name of every network namespace these tests create;
// the pid that follows lets a later run remove what a killed run left.
const nsPrefix = "tcpmap-e2e-"

var (
	// tcpmapdBin is the daemon under test, built by TestMain.
	tcpmapdBin string
	// buildErr is why tcpmapdBin could not be built; every test reports it.
	buildErr error
	// etcNetnsCreated says this run created /etc/netns, so it removes the
	// directory again when it is empty.
	etcNetnsCreated bool
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() == 0 {
		removeStaleNamespaces()
		if _, err := os.Stat("/etc/netns"); os.IsNotExist(err) {
			etcNetnsCreated = true
		}
		dir, err := os.MkdirTemp("", "tcpmap-e2e-bin-")
		if err != nil {
			buildErr = err
		} else {
			defer os.RemoveAll(dir)
			tcpmapdBin, buildErr = buildDaemon(dir)
		}
	}
	if os.Geteuid() == 0 {
		unmount, err := mountBPFFS()
		if err != nil {
			bpffsErr = err
		} else {
			defer unmount()
		}
	}
	code := m.Run()
	if etcNetnsCreated {
		_ = os.Remove("/etc/netns") // only succeeds when empty
	}
	return code
}

// buildDaemon returns $TCPMAPD, or builds cmd/tcpmapd into dir.
func buildDaemon(dir string) (string, error) {
	if p := os.Getenv("TCPMAPD"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("TCPMAPD: %w", err)
		}
		return p, nil
	}
	bin := filepath.Join(dir, "tcpmapd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/tcpmap/tcpmap/cmd/tcpmapd")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/tcpmapd: %w\n%s", err, out)
	}
	return bin, nil
}

// removeStaleNamespaces deletes namespaces (and their /etc/netns files)
// left by an earlier run of this package whose process is gone, for example
// one killed by `go test -timeout`.
func removeStaleNamespaces() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || unix.Kill(pid, 0) != unix.ESRCH {
			continue
		}
		_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		_ = os.RemoveAll(filepath.Join("/etc/netns", e.Name()))
	}
}

// requireRoot skips a test that needs root, or fails it under CI=true.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		msg := "e2e tests need root: network namespaces, veth pairs and /etc/netns (run: sudo -E go test ./test/e2e)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + "; CI=true, so a skip counts as a failure")
		}
		t.Skip(msg)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("iproute2 `ip` not found: %v", err)
	}
}

// requireDaemon fails the test when tcpmapd could not be built.
func requireDaemon(t testing.TB) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("tcpmapd binary: %v", buildErr)
	}
}

// testContext returns a context that ends at d from now, or a little before
// the test binary's own -timeout, whichever comes first, so that a hung
// socket fails the test with a message instead of a panic.
func testContext(t testing.TB, d time.Duration) context.Context {
	deadline := time.Now().Add(d)
	if tt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if td, ok := tt.Deadline(); ok && td.Add(-5*time.Second).Before(deadline) {
			deadline = td.Add(-5 * time.Second)
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

// run executes a command, failing the test with its output on error.
func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if err := runErr(name, args...); err != nil {
		t.Fatal(err)
	}
}

func runErr(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// bpffsRoot is a bpf filesystem of this run's own, where kernel-datapath
// daemons pin their objects. Not /sys/fs/bpf: `ip netns exec` remounts
// /sys in the daemon's mount namespace, hiding any bpffs below it, while a
// mount elsewhere stays visible to the daemon and to bpftool here alike.
var (
	bpffsRoot string
	bpffsErr  error
)

// mountBPFFS mounts bpffsRoot; the returned func unmounts and removes it
// (with whatever a killed daemon left pinned there).
func mountBPFFS() (func(), error) {
	dir := fmt.Sprintf("/run/%s%d-bpffs", nsPrefix, os.Getpid())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	bpffsRoot = dir
	return func() {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		_ = os.Remove(dir)
	}, nil
}

// requireBPFFS returns bpffsRoot, failing the test when it could not be
// mounted.
func requireBPFFS(t testing.TB) string {
	t.Helper()
	requireRoot(t)
	if bpffsErr != nil || bpffsRoot == "" {
		t.Fatalf("no bpffs for the kernel datapath: %v", bpffsErr)
	}
	return bpffsRoot
}
