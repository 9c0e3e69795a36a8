package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"golang.org/x/sys/unix"

	"github.com/tcpmap/tcpmap/internal/testutil"
)

// TestImage builds the image with `make image` and runs it under podman as
// the DaemonSet would run it: host network, the DaemonSet's capabilities
// (not privileged), its seccomp and read-only root file system, the host's
// bpffs mounted; then again as the privileged overlay runs it. Each time
// bytes go through a cleartext TCPMapping to an echo upstream the test
// runs, tcpmapctl inside the image lists the mapping, and a stop (SIGTERM)
// unpins the BPF objects.
func TestImage(t *testing.T) {
	requireImageTools(t)
	root := repoRoot(t)
	m := loadManifests(t)
	c := m.daemonSet(t).Spec.Template.Spec.Containers[0]

	suffix := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1_000_000)
	image := "localhost/tcpmap:deploytest-" + suffix
	work := t.TempDir()
	conf := filepath.Join(work, "containers.conf")
	// The VM forbids raising rlimits; podman's default ulimits fail here.
	if err := os.WriteFile(conf, []byte("[containers]\ndefault_ulimits = []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "CONTAINERS_CONF="+conf)
	podman := func(ctx context.Context, args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "podman", append([]string{"--runtime", "runc"}, args...)...)
		cmd.Env = env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), time.Minute)
	}

	// make image, with its own tag and staging directory so that runs in
	// parallel (or a developer's localhost/tcpmap:dev) are left alone.
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	mk := exec.CommandContext(ctx, "make", "-C", root, "image",
		"IMAGE="+image, "IMAGE_CONTEXT="+filepath.Join(work, "context"))
	mk.Env = env
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		if _, err := podman(ctx, "rmi", "-f", image); err != nil {
			t.Logf("remove image: %v", err)
		}
	})
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Logf("make image took %v", time.Since(start).Round(time.Second))

	var inspect []struct {
		Config struct {
			Entrypoint []string
			Labels     map[string]string
		}
	}
	out, err := podman(ctx, "image", "inspect", image)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("image inspect: %v\n%s", err, out)
	}
	if ep := inspect[0].Config.Entrypoint; len(ep) != 1 || filepath.Base(ep[0]) != "tcpmapd" {
		t.Errorf("entrypoint %q, want tcpmapd", ep)
	}
	for _, l := range []string{"org.opencontainers.image.title", "org.opencontainers.image.source", "org.opencontainers.image.revision"} {
		if inspect[0].Config.Labels[l] == "" {
			t.Errorf("image label %s is missing", l)
		}
	}

	// The init container's step: privileged, the host's bpffs mounted
	// with Bidirectional propagation; on this host it is a bpffs already.
	ic := m.daemonSet(t).Spec.Template.Spec.InitContainers
	if len(ic) == 1 {
		out, err := podman(ctx, append([]string{"run", "--rm", "--privileged", "--network", "host",
			"-v", "/sys/fs/bpf:/sys/fs/bpf:rshared", image}, ic[0].Args...)...)
		if err != nil || !strings.Contains(string(out), "/sys/fs/bpf is a bpffs already") {
			t.Errorf("init container %s: %q, %v; want it to find the host's bpffs", ic[0].Name, out, err)
		}
	}

	// The daemon as the base DaemonSet runs it (its capabilities, not
	// privileged) and as the privileged overlay runs it: each must load
	// the kernel datapath and relay.
	variants := []struct {
		name string
		c    corev1.Container
	}{
		{"daemonset", c},
		{"privileged", privilegedDaemonSet(t, m).Spec.Template.Spec.Containers[0]},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			runImage(t, ctx, podman, cleanupCtx, image, work, suffix, v.name, v.c)
		})
	}
}

// runImage runs the image as container c would run and checks it relays,
// shows its state through tcpmapctl and unpins on SIGTERM.
func runImage(t *testing.T, ctx context.Context, podman func(context.Context, ...string) ([]byte, error),
	cleanupCtx func() (context.Context, context.CancelFunc), image, work, suffix, variant string, c corev1.Container) {
	// The echo upstream and the configuration: one cleartext mapping on a
	// free loopback port.
	upstream := startEcho(t)
	listenPort, metricsPort := testutil.FreePort(t), testutil.FreePort(t)
	cfg, run, state := filepath.Join(work, variant, "config"), filepath.Join(work, variant, "run"), filepath.Join(work, variant, "state")
	for _, d := range []string{cfg, run, state} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	mapping := fmt.Sprintf(`apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata:
  name: deploy-echo
  namespace: default
spec:
  address: 127.0.0.1
  port: %d
  service: %s
`, listenPort, upstream)
	if err := os.WriteFile(filepath.Join(cfg, "echo.yaml"), []byte(mapping), 0o644); err != nil {
		t.Fatal(err)
	}

	// The pin directory is this test's own, so that other tests' daemons
	// (and a node's real one) are not disturbed.
	pinDir := "/sys/fs/bpf/tcpmap-deploytest-" + suffix + "-" + variant
	t.Cleanup(func() {
		if err := os.RemoveAll(pinDir); err != nil {
			t.Logf("remove %s: %v", pinDir, err)
		}
	})
	kernelSplice := kernelAtLeast(6, 4)
	args := []string{
		"--config=/etc/tcpmap",
		"--bpffs=" + pinDir,
		"--admin-socket=/run/tcpmap/tcpmapd.sock",
		"--state-dir=/var/lib/tcpmap",
		"--metrics-addr=127.0.0.1:" + strconv.Itoa(metricsPort),
		"--drain-timeout=5s",
	}
	if kernelSplice {
		// The DaemonSet's capabilities must be enough for the kernel
		// datapath: fail rather than fall back to userspace.
		args = append(args, "--datapath=ebpf")
	}
	if _, err := parseDaemonArgs(args); err != nil {
		t.Fatal(err)
	}

	name := "tcpmap-deploytest-" + suffix + "-" + variant
	runArgs := []string{"run", "-d", "--name", name, "--network", "host"}
	runArgs = append(runArgs, securityArgs(t, c)...)
	runArgs = append(runArgs,
		"-v", "/sys/fs/bpf:/sys/fs/bpf:"+propagation(t, c, "/sys/fs/bpf"),
		"-v", cfg+":/etc/tcpmap:ro",
		"-v", run+":/run/tcpmap",
		"-v", state+":/var/lib/tcpmap",
		image)
	runArgs = append(runArgs, args...)
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		if t.Failed() {
			logs, _ := podman(ctx, "logs", name)
			t.Logf("container logs:\n%s", logs)
		}
		if _, err := podman(ctx, "rm", "-f", "-t", "0", name); err != nil {
			t.Logf("remove container: %v", err)
		}
	})
	if _, err := podman(ctx, runArgs...); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, metricsPort, func() string {
		out, _ := podman(ctx, "inspect", "--format", "{{.State.Status}}", name)
		return strings.TrimSpace(string(out))
	})

	roundTrip(t, "127.0.0.1:"+strconv.Itoa(listenPort))

	// tcpmapctl inside the running container, and from a second
	// container that shares only the admin socket's directory, as
	// tcpmapctl on a node reaches the DaemonSet's pod.
	status, err := podman(ctx, "exec", name, "tcpmapctl", "status")
	if err != nil {
		t.Fatal(err)
	}
	if kernelSplice && !bytes.Contains(status, []byte("kernel+userspace")) {
		t.Errorf("%s: the kernel datapath did not load:\n%s", variant, status)
	}
	// sk_lookup steering (one socket per family serves every port) needs
	// nothing beyond the same capabilities.
	if kernelSplice && !bytes.Contains(status, []byte("Steering:  sk_lookup\n")) {
		t.Errorf("%s: listeners are not steered by sk_lookup:\n%s", variant, status)
	}
	if !bytes.Contains(status, []byte("default/deploy-echo")) {
		t.Errorf("tcpmapctl status does not show the mapping:\n%s", status)
	}
	list, err := podman(ctx, "run", "--rm", "--network", "host", "-v", run+":/run/tcpmap",
		"--entrypoint", "tcpmapctl", image, "list")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(list, []byte("deploy-echo")) {
		t.Errorf("tcpmapctl list through the shared socket directory:\n%s", list)
	}
	if kernelSplice && hostBPFTool() {
		out, err := podman(ctx, "exec", name, "bpftool", "map", "show", "pinned", pinDir+"/sock_hash")
		if err != nil || !bytes.Contains(out, []byte("sockhash")) {
			t.Errorf("bpftool in the image: %v\n%s", err, out)
		}
	}

	// podman stop sends SIGTERM: the daemon drains, then unpins.
	if _, err := podman(ctx, "stop", "-t", "30", name); err != nil {
		t.Fatal(err)
	}
	code, err := podman(ctx, "inspect", "--format", "{{.State.ExitCode}}", name)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(code)); got != "0" {
		t.Errorf("tcpmapd exited with %s after SIGTERM, want 0", got)
	}
	if entries, err := os.ReadDir(pinDir); err == nil {
		t.Errorf("pin directory %s still holds %d object(s) after the daemon stopped", pinDir, len(entries))
	}
}

// requireImageTools skips (fails under CI) without root, podman, runc,
// make or a mounted bpffs.
func requireImageTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "the image test needs root (podman with host networking and the host's bpffs)")
	}
	for _, tool := range []string{"podman", "runc", "make", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, fmt.Sprintf("the image test needs %s (apt-get install podman runc): %v", tool, err))
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		skipOrFail(t, "the image test needs a bpffs on /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
	}
}

// securityArgs turns the container's securityContext into podman flags.
func securityArgs(t *testing.T, c corev1.Container) []string {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the DaemonSet's container has no securityContext.capabilities")
	}
	var args []string
	if sc.Privileged != nil && *sc.Privileged {
		return []string{"--privileged"}
	}
	for _, d := range sc.Capabilities.Drop {
		args = append(args, "--cap-drop", strings.ToLower(string(d)))
	}
	for _, a := range sc.Capabilities.Add {
		args = append(args, "--cap-add", "CAP_"+string(a))
	}
	if p := sc.SeccompProfile; p != nil && p.Type == corev1.SeccompProfileTypeUnconfined {
		args = append(args, "--security-opt", "seccomp=unconfined")
	}
	if ape := sc.AllowPrivilegeEscalation; ape != nil && !*ape {
		args = append(args, "--security-opt", "no-new-privileges")
	}
	if ro := sc.ReadOnlyRootFilesystem; ro != nil && *ro {
		// Kubernetes adds no tmpfs on /run or /tmp; neither may podman.
		args = append(args, "--read-only", "--read-only-tmpfs=false")
	}
	return args
}

// propagation is the podman bind option for the mount at path.
func propagation(t *testing.T, c corev1.Container, path string) string {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != path || vm.MountPropagation == nil {
			continue
		}
		switch *vm.MountPropagation {
		case corev1.MountPropagationBidirectional:
			return "rshared"
		case corev1.MountPropagationHostToContainer:
			return "rslave"
		}
	}
	return "rprivate"
}

// startEcho runs an echo server on loopback for the test's duration.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// waitReady polls the daemon's /readyz, as the DaemonSet's readiness probe
// does, until it answers 200; it fails early when the container stops.
func waitReady(t *testing.T, ctx context.Context, port int, state func() string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if s := state(); s != "running" && s != "created" && s != "configured" && s != "" {
			t.Fatalf("the container is %s before it became ready", s)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s did not answer 200 within a minute", url)
}

// roundTrip sends 256 KiB through addr and wants them back, then a clean
// end of stream after a half-close.
func roundTrip(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 256<<10)
	if _, err := rand.Read(want); err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read through tcpmapd: %v (after %d bytes)", err, len(got))
	}
	if err := <-werr; err != nil {
		t.Fatalf("write through tcpmapd: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes back, want the %d sent, unchanged", len(got), len(want))
	}
}

// kernelAtLeast reports whether the running kernel is at least major.minor.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var maj, min int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &maj, &min); err != nil {
		return false
	}
	return maj > major || (maj == major && min >= minor)
}

// hostBPFTool reports whether make image found a bpftool to copy.
func hostBPFTool() bool {
	if _, err := exec.LookPath("bpftool"); err == nil {
		return true
	}
	_, err := os.Stat("/usr/sbin/bpftool")
	return err == nil
}
