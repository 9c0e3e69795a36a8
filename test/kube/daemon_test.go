package kube

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// daemon is tcpmapd running as a real process, its JSON log collected.
type daemon struct {
	cmd    *exec.Cmd
	socket string
	exited chan struct{}

	mu      sync.Mutex
	lines   []map[string]any
	raw     []string
	changed chan struct{} // closed and replaced on every new line
}

// startDaemon runs tcpmapd with --kubernetes against kubeconfig and waits
// for its "ready" line. Cleanup stops it with SIGTERM, then SIGKILL.
func startDaemon(t *testing.T, ctx context.Context, kubeconfig string, extra ...string) *daemon {
	t.Helper()
	d := &daemon{socket: t.TempDir() + "/admin.sock", exited: make(chan struct{}), changed: make(chan struct{})}
	args := append([]string{"--kubernetes", "--kubeconfig", kubeconfig, "--datapath", "userspace",
		"--admin-socket", d.socket, "--state-dir", "", "--metrics-addr", "", "--watch=false",
		"--node-addresses", "any", "--log-format", "json", "--log-level", "debug", "--drain-timeout", "5s"}, extra...)
	d.cmd = exec.Command(tcpmapdBin, args...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.add(sc.Text())
		}
		_ = d.cmd.Wait()
		close(d.exited)
		d.add("")
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.exited
		}
		if t.Failed() {
			d.mu.Lock()
			raw := d.raw
			if len(raw) > 200 {
				raw = raw[len(raw)-200:]
			}
			t.Logf("--- last of tcpmapd log ---\n%s", strings.Join(raw, "\n"))
			d.mu.Unlock()
		}
	})
	if _, err := d.waitLog(ctx, 0, func(e map[string]any) bool { return e["msg"] == "ready" }); err != nil {
		t.Fatalf("tcpmapd ready: %v", err)
	}
	return d
}

func (d *daemon) add(line string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if line != "" {
		d.raw = append(d.raw, line)
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil {
			d.lines = append(d.lines, e)
		}
	}
	close(d.changed)
	d.changed = make(chan struct{})
}

// mark is the position of the next log entry, for waitLog.
func (d *daemon) mark() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.lines)
}

// waitLog waits for a log entry from position from on that matches pred,
// the daemon's exit, or ctx's end.
func (d *daemon) waitLog(ctx context.Context, from int, pred func(map[string]any) bool) (map[string]any, error) {
	seen := from
	for {
		d.mu.Lock()
		for ; seen < len(d.lines); seen++ {
			if pred(d.lines[seen]) {
				e := d.lines[seen]
				d.mu.Unlock()
				return e, nil
			}
		}
		ch := d.changed
		d.mu.Unlock()
		select {
		case <-ch:
		case <-d.exited:
			return nil, errors.New("tcpmapd exited")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ctl runs tcpmapctl against the daemon's admin socket.
func (d *daemon) ctl(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, tcpmapctlBin, append([]string{"--socket", d.socket}, args...)...).CombinedOutput()
	return string(out), err
}
