package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// readyTimeout bounds the wait for tcpmapd's "ready" line.
const readyTimeout = 20 * time.Second

// logEntry is one JSON log line of tcpmapd.
type logEntry map[string]any

func (e logEntry) str(k string) string {
	switch v := e[k].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// problemText is a config problem as one string: resource, field, reason,
// origin.
func (e logEntry) problemText() string {
	return fmt.Sprintf("resource=%q field=%q reason=%q origin=%q level=%s",
		e.str("resource"), e.str("field"), e.str("reason"), e.str("origin"), e.str("level"))
}

// daemon is a tcpmapd process running in the proxy namespace.
type daemon struct {
	t    testing.TB
	args []string
	cmd  *exec.Cmd

	mu      sync.Mutex
	raw     bytes.Buffer // everything on stderr and stdout
	partial []byte
	entries []logEntry
	notify  chan struct{} // closed and replaced on every new line

	exited  chan struct{}
	waitErr error
}

// e2eDatapath is the datapath every daemon runs unless a test asks for
// another: $E2E_DATAPATH, default userspace. `make test` runs the suite
// once as it is and once with E2E_DATAPATH=ebpf, so every behaviour is
// checked on both datapaths.
func e2eDatapath() string {
	if d := os.Getenv("E2E_DATAPATH"); d != "" {
		return d
	}
	return "userspace"
}

// pinCounter numbers the bpffs directories of kernel-datapath daemons.
var pinCounter atomic.Int64

// daemonArgs are the flags every test passes; extra flags come after.
func daemonArgs(configs []string, extra ...string) []string {
	// No admin socket by default: parallel daemons would contend for the
	// default path. Tests of tcpmapctl pass their own (the last flag wins).
	// No file watching either, so that a reload test proves its own
	// trigger (SIGHUP); the watch test turns it on.
	args := []string{"--datapath", e2eDatapath(), "--log-format", "json", "--log-level", "debug", "--admin-socket", "",
		"--watch=false", "--state-dir", ""}
	if e2eDatapath() != "userspace" {
		// Each daemon pins its objects in a directory of its own.
		args = append(args, "--bpffs", filepath.Join(bpffsRoot, fmt.Sprintf("d%d", pinCounter.Add(1))))
	}
	for _, c := range configs {
		args = append(args, "--config", c)
	}
	return append(args, extra...)
}

// launch starts tcpmapd with args in the proxy namespace, in its own
// process group, without waiting for it to be ready. t.Cleanup kills the
// process group, and dumps the log when the test failed.
func (tp *topology) launch(t testing.TB, args ...string) *daemon {
	t.Helper()
	return tp.launchEnv(t, nil, args...)
}

// launchEnv is launch with extra environment variables ("K=V").
func (tp *topology) launchEnv(t testing.TB, env []string, args ...string) *daemon {
	t.Helper()
	requireDaemon(t)
	d := &daemon{t: t, args: args, notify: make(chan struct{}), exited: make(chan struct{})}
	full := append([]string{"netns", "exec", tp.proxy.name, tcpmapdBin}, args...)
	d.cmd = exec.Command("ip", full...)
	if env != nil {
		d.cmd.Env = append(os.Environ(), env...)
	}
	d.cmd.Stderr = (*daemonWriter)(d)
	d.cmd.Stdout = (*daemonWriter)(d)
	// `ip netns exec` execs the daemon, so the pid is tcpmapd's own and
	// signals reach it directly. Pdeathsig stops it should the test binary
	// itself be killed.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	t.Cleanup(func() {
		if t.Failed() {
			d.mu.Lock()
			t.Logf("tcpmapd %s output:\n%s", strings.Join(args, " "), d.raw.String())
			d.mu.Unlock()
		}
	})
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start tcpmapd: %v", err)
	}
	go func() {
		err := d.cmd.Wait()
		d.mu.Lock()
		d.waitErr = err
		d.flushPartial()
		d.mu.Unlock()
		close(d.exited)
	}()
	t.Cleanup(d.kill)
	return d
}

// start launches tcpmapd and waits for its "ready" line.
func (tp *topology) start(t testing.TB, args ...string) *daemon {
	t.Helper()
	d := tp.launch(t, args...)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if _, err := d.waitLog(ctx, `"msg":"ready"`, func(e logEntry) bool { return e.str("msg") == "ready" }); err != nil {
		t.Fatalf("tcpmapd did not become ready: %v", err)
	}
	return d
}

// kill ends the process group and waits for the process.
func (d *daemon) kill() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.t.Errorf("tcpmapd pid %d did not exit after SIGKILL", d.cmd.Process.Pid)
	}
}

// signal sends sig to the daemon.
func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits for the daemon to exit and returns its exit code.
func (d *daemon) wait(ctx context.Context) (int, error) {
	select {
	case <-d.exited:
	case <-ctx.Done():
		return -1, fmt.Errorf("tcpmapd still running: %w", ctx.Err())
	}
	if d.waitErr == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(d.waitErr, &ee) {
		return ee.ExitCode(), nil
	}
	return -1, d.waitErr
}

// alive reports whether the process is still running.
func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// daemonWriter splits the daemon's output into lines and JSON entries.
type daemonWriter daemon

func (w *daemonWriter) Write(p []byte) (int, error) {
	d := (*daemon)(w)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.raw.Write(p)
	d.partial = append(d.partial, p...)
	for {
		i := bytes.IndexByte(d.partial, '\n')
		if i < 0 {
			break
		}
		d.addLine(d.partial[:i])
		d.partial = d.partial[i+1:]
	}
	return len(p), nil
}

func (d *daemon) flushPartial() {
	if len(d.partial) > 0 {
		d.addLine(d.partial)
		d.partial = nil
	}
}

// addLine records one line; d.mu is held.
func (d *daemon) addLine(line []byte) {
	var e logEntry
	if err := json.Unmarshal(bytes.TrimSpace(line), &e); err != nil || e == nil {
		e = logEntry{"raw": string(line)}
	}
	d.entries = append(d.entries, e)
	close(d.notify)
	d.notify = make(chan struct{})
}

// logs returns the entries logged so far.
func (d *daemon) logs() []logEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]logEntry(nil), d.entries...)
}

// waitLog waits for an entry matching pred; desc names it in the error.
func (d *daemon) waitLog(ctx context.Context, desc string, pred func(logEntry) bool) (logEntry, error) {
	next := 0
	for {
		d.mu.Lock()
		for ; next < len(d.entries); next++ {
			if pred(d.entries[next]) {
				e := d.entries[next]
				d.mu.Unlock()
				return e, nil
			}
		}
		notify := d.notify
		d.mu.Unlock()
		select {
		case <-notify:
		case <-d.exited:
			d.mu.Lock()
			n := len(d.entries)
			err := d.waitErr
			d.mu.Unlock()
			if next >= n {
				return nil, fmt.Errorf("tcpmapd exited (%v) before logging %s", err, desc)
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("no log line %s: %w", desc, ctx.Err())
		}
	}
}

// problems returns the "config problem" entries logged so far.
func (d *daemon) problems() []logEntry {
	var out []logEntry
	for _, e := range d.logs() {
		if e.str("msg") == "config problem" {
			out = append(out, e)
		}
	}
	return out
}

// findProblem returns the first config problem matching pred, or fails the
// test listing the problems that were logged.
func (d *daemon) findProblem(t testing.TB, desc string, pred func(logEntry) bool) logEntry {
	t.Helper()
	ps := d.problems()
	for _, p := range ps {
		if pred(p) {
			return p
		}
	}
	var list []string
	for _, p := range ps {
		list = append(list, "  "+p.problemText())
	}
	t.Errorf("no config problem %s; logged problems:\n%s", desc, strings.Join(list, "\n"))
	return nil
}

// check runs `tcpmapd check` with the given config paths in the proxy
// namespace and returns its combined output and exit code.
func (tp *topology) check(t testing.TB, configs ...string) (string, int) {
	t.Helper()
	requireDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := []string{"netns", "exec", tp.proxy.name, tcpmapdBin, "check"}
	for _, c := range configs {
		args = append(args, "--config", c)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee) && ctx.Err() == nil:
		return string(out), ee.ExitCode()
	default:
		t.Fatalf("tcpmapd check: %v\n%s", err, out)
		return "", -1
	}
}

// configDir makes a config directory holding secrets.yaml (every generated
// Secret) and the named fixtures from testdata, plus extra files given as
// name → content.
func configDir(t testing.TB, fixtures []string, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("secrets.yaml", secretsYAML())
	for _, f := range fixtures {
		b, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		write(filepath.Base(f), string(b))
	}
	for name, content := range extra {
		write(name, content)
	}
	return dir
}
