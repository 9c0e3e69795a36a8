package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/api"
)

// These tests run tcpmapd with the eBPF kernel splice (--datapath ebpf):
// cleartext passthrough bytes move between the sockets in the kernel.

var (
	ctlOnce sync.Once
	ctlBin  string
	ctlErr  error
)

// tcpmapctl builds cmd/tcpmapctl once per run.
func tcpmapctl(t testing.TB) string {
	t.Helper()
	ctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tcpmap-e2e-ctl-")
		if err != nil {
			ctlErr = err
			return
		}
		ctlBin = filepath.Join(dir, "tcpmapctl")
		out, err := exec.Command("go", "build", "-o", ctlBin, "../../cmd/tcpmapctl").CombinedOutput()
		if err != nil {
			ctlErr = fmt.Errorf("build tcpmapctl: %v\n%s", err, out)
		}
	})
	if ctlErr != nil {
		t.Fatal(ctlErr)
	}
	return ctlBin
}

// kernelDaemon holds what a kernel-datapath daemon needs: its own pin
// directory on bpffs and its own admin socket.
type kernelDaemon struct {
	pinDir string
	socket string
}

func newKernelDaemon(t testing.TB) kernelDaemon {
	t.Helper()
	root := requireBPFFS(t)
	k := kernelDaemon{
		pinDir: filepath.Join(root, fmt.Sprintf("k%d", pinCounter.Add(1))),
		socket: filepath.Join(t.TempDir(), "tcpmapd.sock"),
	}
	t.Cleanup(func() {
		// A daemon killed with SIGKILL leaves its pins; the next start
		// cleans them, but a test must leave nothing behind.
		if err := os.RemoveAll(k.pinDir); err != nil {
			t.Errorf("remove %s: %v", k.pinDir, err)
		}
	})
	return k
}

// args runs the daemon on the kernel datapath, handing each connection
// over right after the dial (no --splice-after-* deferral), so that what
// these tests see is the kernel's work; extra flags come last and win.
func (k kernelDaemon) args(configs []string, extra ...string) []string {
	args := daemonArgs(configs, "--datapath", "ebpf", "--bpffs", k.pinDir, "--admin-socket", k.socket,
		"--splice-after-bytes", "0", "--splice-after-time", "0")
	return append(args, extra...)
}

// status runs `tcpmapctl status -o json`.
func (k kernelDaemon) status(t testing.TB) api.Status {
	t.Helper()
	var s api.Status
	k.ctlJSON(t, &s, "status")
	return s
}

func (k kernelDaemon) ctlJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	args = append([]string{"--socket", k.socket, "-o", "json"}, args...)
	out, err := exec.Command(tcpmapctl(t), args...).Output()
	if err != nil {
		t.Fatalf("tcpmapctl %s: %v", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("tcpmapctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func mappingStatus(t testing.TB, s api.Status, name string) api.Mapping {
	t.Helper()
	for _, l := range s.Listeners {
		for _, m := range l.Mappings {
			if m.Name == name {
				return m
			}
		}
	}
	t.Fatalf("mapping %s not in status %+v", name, s)
	return api.Mapping{}
}

// TestKernelSpliceLargeTransfer: 1 GiB each way at once through the kernel
// splice, SHA-256 equal at both ends; the daemon's own byte counters stay
// at zero (nothing is read behind a PROXY header here) while the kernel's
// show every byte. While the transfer runs, tcpmapctl conns shows the
// connection in the kernel datapath with a mechanism per direction.
func TestKernelSpliceLargeTransfer(t *testing.T) {
	tp := newTopology(t)
	k := newKernelDaemon(t)
	n := bulkBytes(t)
	const upSeed, downSeed = 0x51ce, 0xd0e5
	upDone := make(chan bulkResult, 1)
	tp.serveFunc(t, "upstream", 7000, false, func(c net.Conn, _ *tls.ConnectionState) {
		_ = c.SetDeadline(time.Now().Add(4 * time.Minute))
		upDone <- exchange(c, downSeed, n)
	})
	tp.start(t, k.args([]string{configDir(t, []string{"bulk/bulk.yaml"}, nil)})...)

	ctx := testContext(t, 3*time.Minute)
	c, err := tp.connect(ctx, proxyAddr(7000))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	clientDone := make(chan bulkResult, 1)
	start := time.Now()
	go func() { clientDone <- exchange(c, upSeed, n) }()

	// While bytes flow: the connection is the kernel's.
	// (Right after connect it may still be in setup: wait for the hand-off.)
	var conns []api.Conn
	waitUntil(t, ctx, "tcpmapctl conns to show the kernel connection", func() bool {
		conns = nil
		k.ctlJSON(t, &conns, "conns", "--mapping", "default/bulk-passthrough")
		return len(conns) == 1 && conns[0].Datapath == "kernel" && conns[0].Kernel != nil &&
			conns[0].Kernel.ToUpstream.Mechanism != "" && conns[0].Kernel.ToClient.Mechanism != ""
	})

	checkExchange(t, ctx, <-clientDone, upDone)
	el := time.Since(start)
	t.Logf("%d MiB each way in %v through the kernel splice", n>>20, el.Round(time.Millisecond))
	c.Close()

	// Every byte is accounted for, by the kernel or (for a congested
	// direction, back-pressured through the daemon) by the daemon.
	var m api.Mapping
	waitUntil(t, ctx, "the spliced connection's end to be counted", func() bool {
		m = mappingStatus(t, k.status(t), "default/bulk-passthrough")
		return m.Active == 0 && m.Spliced == 1
	})
	if got := m.KernelBytesToUpstream + m.BytesToUpstream; got != uint64(n) {
		t.Errorf("client→upstream accounted %d bytes (kernel %d + daemon %d), want %d", got, m.KernelBytesToUpstream, m.BytesToUpstream, n)
	}
	if got := m.KernelBytesToClient + m.BytesToClient; got != uint64(n) {
		t.Errorf("upstream→client accounted %d bytes (kernel %d + daemon %d), want %d", got, m.KernelBytesToClient, m.BytesToClient, n)
	}
	t.Logf("bulk: kernel moved %d/%d MiB, the daemon %d/%d MiB (back-pressure)", m.KernelBytesToUpstream>>20,
		m.KernelBytesToClient>>20, m.BytesToUpstream>>20, m.BytesToClient>>20)
}

// checkExchange waits for the upstream's end of an exchange and fails
// unless both ends finished and each received what the other sent.
func checkExchange(t *testing.T, ctx context.Context, client bulkResult, upDone <-chan bulkResult) {
	t.Helper()
	var up bulkResult
	select {
	case up = <-upDone:
	case <-ctx.Done():
		t.Fatal("upstream did not finish")
	}
	if client.err != nil || up.err != nil {
		t.Fatalf("client: %v; upstream: %v", client.err, up.err)
	}
	if !bytes.Equal(client.sent, up.received) || !bytes.Equal(up.sent, client.received) {
		t.Fatalf("SHA-256 differ: client sent %x, upstream got %x; upstream sent %x, client got %x",
			client.sent, up.received, up.sent, client.received)
	}
}

// TestKernelSplicePayloadBypassesUserspace: request/response traffic never
// congests a direction, so every payload byte after the hand-off stays in
// the kernel: the daemon's own byte counters stay at zero while the
// kernel's count it all.
func TestKernelSplicePayloadBypassesUserspace(t *testing.T) {
	tp := newTopology(t)
	k := newKernelDaemon(t)
	tp.serveFunc(t, "upstream", 22, false, func(c net.Conn, _ *tls.ConnectionState) {
		_, _ = io.Copy(c, c)
	})
	tp.start(t, k.args([]string{configDir(t, []string{"docs/ssh.yaml"}, nil)})...)
	ctx := testContext(t, time.Minute)
	c, err := tp.connect(ctx, proxyAddr(2222))
	if err != nil {
		t.Fatal(err)
	}
	// Bytes that arrive before the hand-off are forwarded by the daemon
	// itself (the hand-off bytes); start talking once the kernel owns the
	// connection, so that every byte below is payload after it.
	waitUntil(t, ctx, "the connection to be spliced", func() bool {
		m := mappingStatus(t, k.status(t), "default/ssh")
		return m.Spliced == 1 && m.Active == 1
	})
	const rounds, size = 2000, 1024
	msg, got := bytes.Repeat([]byte("k"), size), make([]byte, size)
	for i := 0; i < rounds; i++ {
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("round %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("round %d: read: %v", i, err)
		}
	}
	c.Close()
	var m api.Mapping
	waitUntil(t, ctx, "the connection's end to be counted", func() bool {
		m = mappingStatus(t, k.status(t), "default/ssh")
		return m.Active == 0 && m.Spliced == 1
	})
	const total = rounds * size
	if m.KernelBytesToUpstream != total || m.KernelBytesToClient != total {
		t.Errorf("kernel counted %d/%d bytes, want %d each way", m.KernelBytesToUpstream, m.KernelBytesToClient, total)
	}
	if m.BytesToUpstream != 0 || m.BytesToClient != 0 {
		t.Errorf("the daemon itself moved %d/%d payload bytes, want 0/0", m.BytesToUpstream, m.BytesToClient)
	}
}

// TestKernelSpliceServerSpeaksFirst: an upstream that greets before the
// client sends anything; its bytes are queued on the upstream socket at
// hand-off and must still arrive. (Every other passthrough behaviour, from
// half-close to PROXY headers, is covered by running the whole suite with
// E2E_DATAPATH=ebpf, as `make test` does.)
func TestKernelSpliceServerSpeaksFirst(t *testing.T) {
	tp := newTopology(t)
	k := newKernelDaemon(t)
	tp.serveEcho(t, "upstream", 22, false)
	tp.start(t, k.args([]string{configDir(t, []string{"docs/ssh.yaml"}, nil)})...)
	ctx := testContext(t, time.Minute)

	// The echo upstream speaks first (its greeting), then echoes.
	g, err := tp.reach(ctx, proxyAddr(2222))
	if err != nil {
		t.Fatalf("port 2222: %v", err)
	}
	checkGreeting(t, "port 2222", g, want{upstream: "upstream", port: 22, tls: false})
	if m := mappingStatus(t, k.status(t), "default/ssh"); m.Spliced == 0 {
		t.Errorf("connection was not spliced: %+v", m)
	}
}

// TestKernelFallback: with BPF loading forced to fail, --datapath auto says
// why in one log line and serves everything in userspace; --datapath ebpf
// refuses to start.
func TestKernelFallback(t *testing.T) {
	tp := newTopology(t)
	k := newKernelDaemon(t)
	tp.serveEcho(t, "upstream", 22, false)
	cfg := configDir(t, []string{"docs/ssh.yaml"}, nil)
	env := []string{"TCPMAP_FORCE_BPF_FAIL=1"}

	auto := k.args([]string{cfg})
	for i, a := range auto {
		if a == "ebpf" {
			auto[i] = "auto"
		}
	}
	d := tp.launchEnv(t, env, auto...)
	ctx := testContext(t, time.Minute)
	e, err := d.waitLog(ctx, "datapath line", func(e logEntry) bool { return e.str("msg") == "datapath" })
	if err != nil {
		t.Fatal(err)
	}
	if e.str("mode") != "userspace" || !strings.Contains(e.str("reason"), "forced") {
		t.Errorf("datapath line = %v, want userspace with the forced failure as reason", e)
	}
	if _, err := d.waitLog(ctx, "ready", func(e logEntry) bool { return e.str("msg") == "ready" }); err != nil {
		t.Fatal(err)
	}
	if g, err := tp.reach(ctx, proxyAddr(2222)); err != nil {
		t.Fatalf("userspace fallback does not serve: %v", err)
	} else {
		checkGreeting(t, "port 2222", g, want{upstream: "upstream", port: 22, tls: false})
	}
	if m := mappingStatus(t, k.status(t), "default/ssh"); m.Spliced != 0 || m.Total == 0 {
		t.Errorf("fallback counters %+v, want relayed, not spliced", m)
	}
	d.signal(syscall.SIGTERM)
	if code, err := d.wait(ctx); err != nil || code != 0 {
		t.Fatalf("auto daemon exit = %d, %v", code, err)
	}

	strict := tp.launchEnv(t, env, k.args([]string{cfg})...)
	code, err := strict.wait(ctx)
	if err != nil || code == 0 {
		t.Fatalf("--datapath ebpf with BPF unavailable: exit %d, %v; want a non-zero exit", code, err)
	}
}

// TestKernelPinsLifecycle: the objects are pinned with BTF (bpftool shows
// named fields), removed on a clean stop, and a daemon restarted after
// SIGKILL cleans up what the dead one left and serves.
func TestKernelPinsLifecycle(t *testing.T) {
	if _, err := exec.LookPath("bpftool"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("bpftool is required under CI: %v", err)
		}
		t.Skip("bpftool not installed")
	}
	tp := newTopology(t)
	k := newKernelDaemon(t)
	tp.serveFunc(t, "upstream", 22, false, func(c net.Conn, _ *tls.ConnectionState) {
		// Hold the connection open so its map entries can be dumped.
		buf := make([]byte, 1)
		c.Read(buf)
	})
	cfg := configDir(t, []string{"docs/ssh.yaml"}, nil)
	d := tp.start(t, k.args([]string{cfg})...)
	ctx := testContext(t, time.Minute)

	c, err := tp.connect(ctx, proxyAddr(2222))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var dump string
	waitUntil(t, ctx, "the pair in bpftool's dump of pairs", func() bool {
		out, err := exec.Command("bpftool", "map", "dump", "pinned", filepath.Join(k.pinDir, "pairs"), "-j").Output()
		dump = string(out)
		return err == nil && strings.Contains(dump, `"peer"`) && strings.Contains(dump, `"mapping_id"`)
	})
	for _, m := range []string{"sock_hash", "dirs", "ctl", "mapping_totals", "events", "stats", "prog_splice_verdict"} {
		if _, err := os.Stat(filepath.Join(k.pinDir, m)); err != nil {
			t.Errorf("pinned object %s: %v", m, err)
		}
	}
	c.Close()

	// Clean stop: nothing stays pinned.
	d.signal(syscall.SIGTERM)
	if code, err := d.wait(ctx); err != nil || code != 0 {
		t.Fatalf("exit = %d, %v", code, err)
	}
	if _, err := os.Stat(k.pinDir); !os.IsNotExist(err) {
		t.Fatalf("pin directory after a clean stop: %v, want it gone", err)
	}

	// SIGKILL leaves the pins; a new daemon cleans them and serves.
	d = tp.start(t, k.args([]string{cfg})...)
	d.kill()
	if _, err := os.Stat(filepath.Join(k.pinDir, "sock_hash")); err != nil {
		t.Fatalf("after SIGKILL the pins should still be there: %v", err)
	}
	d = tp.start(t, k.args([]string{cfg})...)
	c2, err := tp.connect(ctx, proxyAddr(2222))
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	defer c2.Close()
	waitUntil(t, ctx, "the restarted daemon to splice a connection", func() bool {
		return mappingStatus(t, k.status(t), "default/ssh").Spliced == 1
	})
}

// waitUntil polls cond every 50ms until it holds or ctx ends.
func waitUntil(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestKernelSpliceAfter: with --splice-after-bytes, a short exchange stays in
// the daemon and is never handed over, while a bulk exchange both ways
// is handed to the kernel mid-stream: the bytes the daemon already
// relayed and the ones the kernel moves after make SHA-256-equal streams,
// and the counters add up to every byte.
func TestKernelSpliceAfter(t *testing.T) {
	tp := newTopology(t)
	k := newKernelDaemon(t)
	const n = 64 << 20
	const upSeed, downSeed = 0xaf7e, 0x5eed
	upDone := make(chan bulkResult, 1)
	tp.serveFunc(t, "upstream", 7000, false, func(c net.Conn, _ *tls.ConnectionState) {
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
		var req [5]byte
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return
		}
		if string(req[:]) == "short" {
			_, _ = io.WriteString(c, "answer")
			_, _ = io.Copy(io.Discard, c)
			return
		}
		upDone <- exchange(c, downSeed, n)
	})
	d := tp.start(t, k.args([]string{configDir(t, []string{"bulk/bulk.yaml"}, nil)}, "--splice-after-bytes", "1MiB")...)
	ctx := testContext(t, 2*time.Minute)

	short, err := tp.connect(ctx, proxyAddr(7000))
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	_ = short.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(short, "short"); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(io.LimitReader(short, 6)); err != nil || string(got) != "answer" {
		t.Fatalf("short exchange: %q, %v", got, err)
	}
	var conns []api.Conn
	k.ctlJSON(t, &conns, "conns", "--mapping", "default/bulk-passthrough")
	if len(conns) != 1 || conns[0].Datapath != "relay-copy" || !strings.Contains(conns[0].Why, "then the kernel") {
		t.Errorf("short connection in conns: %+v, want relay-copy until the threshold", conns)
	}
	if m := mappingStatus(t, k.status(t), "default/bulk-passthrough"); m.Spliced != 0 {
		t.Errorf("short connection spliced (%d), want it relayed in the daemon", m.Spliced)
	}
	short.Close()

	c, err := tp.connect(ctx, proxyAddr(7000))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "bulk!"); err != nil {
		t.Fatal(err)
	}
	checkExchange(t, ctx, exchange(c, upSeed, n), upDone)
	c.Close()

	var m api.Mapping
	waitUntil(t, ctx, "both connections' ends to be counted", func() bool {
		m = mappingStatus(t, k.status(t), "default/bulk-passthrough")
		return m.Active == 0 && m.Total == 2
	})
	if m.Spliced != 1 {
		t.Errorf("spliced %d connections, want the bulk one only", m.Spliced)
	}
	wantUp, wantDown := uint64(len("short")+len("bulk!")+n), uint64(len("answer")+n)
	if got := m.KernelBytesToUpstream + m.BytesToUpstream; got != wantUp {
		t.Errorf("client→upstream accounted %d bytes (kernel %d + daemon %d), want %d", got, m.KernelBytesToUpstream, m.BytesToUpstream, wantUp)
	}
	if got := m.KernelBytesToClient + m.BytesToClient; got != wantDown {
		t.Errorf("upstream→client accounted %d bytes (kernel %d + daemon %d), want %d", got, m.KernelBytesToClient, m.BytesToClient, wantDown)
	}
	if m.KernelBytesToUpstream == 0 || m.KernelBytesToClient == 0 {
		t.Errorf("the kernel moved %d/%d bytes after the hand-off, want some each way", m.KernelBytesToUpstream, m.KernelBytesToClient)
	}
	putOff := 0
	for _, e := range d.logs() {
		if strings.HasPrefix(e.str("msg"), "kernel hand-off put off") {
			putOff++
		}
	}
	t.Logf("daemon moved %d/%d KiB before the hand-off (put off %d times), the kernel %d/%d MiB after", m.BytesToUpstream>>10,
		m.BytesToClient>>10, putOff, m.KernelBytesToUpstream>>20, m.KernelBytesToClient>>20)
}
