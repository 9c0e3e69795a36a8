package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/api"
)

// ctl runs tcpmapctl against socket and returns its stdout, stderr and
// exit code.
func ctl(t testing.TB, socket string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(tcpmapctl(t), append([]string{"--socket", socket}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("tcpmapctl %v: %v", args, err)
	return "", "", -1
}

// TestCtlAddListRemove: a mapping added with tcpmapctl serves at once,
// is listed with its source, survives a daemon restart (state dir), and is
// removed again; a file-sourced mapping cannot be removed (exit 1, the file
// named).
func TestCtlAddListRemove(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 90*time.Second)
	tp.serveEcho(t, "upstream", 22, false)
	tp.serveEcho(t, "cockroach", 26257, false)
	dir := t.TempDir()
	socket, state := filepath.Join(dir, "tcpmapd.sock"), filepath.Join(dir, "state")
	cfg := configDir(t, []string{"docs/ssh.yaml", "bad/unknown-field.yaml"}, nil)
	args := daemonArgs([]string{cfg}, "--admin-socket", socket, "--state-dir", state)
	d := tp.start(t, args...)

	if out, errOut, code := ctl(t, socket, "add", "cockroach", "--port", "26257", "--service", hostIP(t, "cockroach")+":26257"); code != 0 {
		t.Fatalf("add: exit %d\n%s%s", code, out, errOut)
	}
	g, err := poll(ctx, 10*time.Second, func(ctx context.Context) (greeting, error) { return tp.reach(ctx, proxyAddr(26257)) })
	if err != nil {
		t.Fatalf("added mapping does not serve: %v", err)
	}
	checkGreeting(t, "port 26257", g, want{upstream: "cockroach", port: 26257})

	out, _, code := ctl(t, socket, "list")
	if code != 0 || !strings.Contains(out, "cockroach") || !strings.Contains(out, "api") || !strings.Contains(out, "ssh.yaml") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}

	// status lists every resource with its source and outcome: the
	// applied one, the file's good one, and the file's rejected one with
	// the field that sank it.
	out, _, code = ctl(t, socket, "status", "-o", "json")
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("status -o json: exit %d, %v\n%s", code, err, out)
	}
	outcomes := map[string]api.Resource{}
	for _, r := range st.Resources {
		outcomes[r.Kind+" "+r.Namespace+"/"+r.Name] = r
	}
	for name, want := range map[string]string{
		"TCPMapping default/cockroach": "api accepted",
		"TCPMapping default/ssh":       "file accepted",
		"TCPMapping default/typo":      "file rejected",
	} {
		r := outcomes[name]
		source, _, _ := strings.Cut(r.Source, ":")
		if got := source + " " + r.Outcome; got != want {
			t.Errorf("status resource %s: %q (%+v), want %q", name, got, r, want)
		}
	}
	if errs := outcomes["TCPMapping default/typo"].Errors; len(errs) == 0 || !strings.Contains(strings.Join(errs, ";"), "idle_timout_ms") {
		t.Errorf("rejected resource's errors %q do not name spec.idle_timout_ms", errs)
	}
	text, _, _ := ctl(t, socket, "status")
	if !regexp.MustCompile(`TCPMapping\s+default\s+typo\s+file:\S+unknown-field.yaml:\d+\s+rejected`).MatchString(text) {
		t.Errorf("status text does not list the rejected resource:\n%s", text)
	}

	_, errOut, code := ctl(t, socket, "remove", "ssh")
	if code != 1 || !strings.Contains(errOut, "ssh.yaml") {
		t.Fatalf("remove of a file-sourced mapping: exit %d, stderr %q; want 1 naming the file", code, errOut)
	}

	// Restart: the applied mapping comes back from the state directory.
	d.signal(syscall.SIGTERM)
	if code, err := d.wait(ctx); err != nil || code != 0 {
		t.Fatalf("exit = %d, %v", code, err)
	}
	tp.start(t, args...)
	if _, err := poll(ctx, 10*time.Second, func(ctx context.Context) (greeting, error) { return tp.reach(ctx, proxyAddr(26257)) }); err != nil {
		t.Fatalf("applied mapping after restart: %v", err)
	}

	if out, errOut, code := ctl(t, socket, "remove", "cockroach"); code != 0 {
		t.Fatalf("remove: exit %d\n%s%s", code, out, errOut)
	}
	waitUntil(t, ctx, "port 26257 to close", func() bool {
		c, err := tp.connect(ctx, proxyAddr(26257))
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	if _, _, code := ctl(t, socket, "get", "cockroach"); code != 1 {
		t.Errorf("get after remove: exit %d, want 1", code)
	}
}
