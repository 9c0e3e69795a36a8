package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The harness starts this binary again as its Go relay and idle holder.
	if runChild() {
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestQuickRun runs the harness in --quick mode against the direct path and
// tcpmapd's userspace datapath, and checks that it measured every metric and
// left nothing running. It checks that numbers came out, never how good they
// are.
func TestQuickRun(t *testing.T) {
	tmp := t.TempDir()

	// Building tcpmapd is not the harness's time: a cold build cache alone
	// can take half a minute on two cores.
	bctx, bcancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer bcancel()
	root, err := moduleRoot(bctx)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tmp, "tcpmapd")
	build := exec.CommandContext(bctx, goTool(), "build", "-o", bin, "./cmd/tcpmapd")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build tcpmapd: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	jsonPath := filepath.Join(tmp, "bench.json")
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"--quick", "--only=direct,userspace", "--tcpmapd", bin, "--json", jsonPath}, &stdout, &stderr)
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if ctx.Err() != nil {
		t.Fatalf("harness did not finish within 30 s")
	}
	if code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("--json output: %v", err)
	}
	// Every metric each row must have; a proxy process adds the ones that
	// read it.
	common := []string{"bulk1_gbps", "bulk4_gbps", "machine_cpu_s_per_gb", "rr_p50_us", "rr_p99_us", "conns_per_s",
		"slow_kernel_mib", "slow_queued_mib", "slow_written_mib", "slow_read_mib"}
	want := map[string][]string{
		"direct":    common,
		"userspace": append([]string{"proxy_cpu_s_per_gb", "idle_rss_kib_per_conn", "idle_fds_per_conn", "idle_conns"}, common...),
	}
	if len(rep.Results) != len(want) {
		t.Fatalf("%d results, want %d", len(rep.Results), len(want))
	}
	for _, r := range rep.Results {
		keys, ok := want[r.Proxy]
		if !ok {
			t.Errorf("unexpected result for %q", r.Proxy)
			continue
		}
		if r.Status != statusOK || len(r.Errors) > 0 {
			t.Errorf("%s: status %s, reason %q, errors %v", r.Proxy, r.Status, r.Reason, r.Errors)
			continue
		}
		for _, k := range keys {
			v, ok := r.Metrics[k]
			switch {
			case !ok:
				t.Errorf("%s: no %s", r.Proxy, k)
			case k == "slow_kernel_mib":
				// Machine-wide TCP memory: other test packages running at
				// the same time may free as much as this test queues.
				if v < 0 {
					t.Errorf("%s: %s = %v, want >= 0", r.Proxy, k, v)
				}
			case v <= 0:
				t.Errorf("%s: %s = %v, want > 0", r.Proxy, k, v)
			}
		}
	}
	for _, row := range []string{"| direct (no proxy) |", "| tcpmapd --datapath userspace |", "### Issue 4 targets"} {
		if !strings.Contains(stdout.String(), row) {
			t.Errorf("printed report lacks %q", row)
		}
	}

	// Nothing the harness started is left: no child process, no goroutine.
	if kids := children(t); len(kids) > 0 {
		t.Errorf("child processes left running: %v", kids)
	}
	goleak.VerifyNone(t)
}

// children lists the processes whose parent is this test process.
func children(t *testing.T) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, err := procParent(pid); err == nil && ppid == os.Getpid() {
			out = append(out, pid)
		}
	}
	return out
}

// TestParseFlags checks the flag rules: --quick shortens what was not set,
// bulk expands to both bulk tests, unknown names are usage errors.
func TestParseFlags(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr bool
		check   func(*options) string
	}{
		{args: nil, check: func(o *options) string {
			if o.duration != 3*time.Second || o.idleConns != 10000 || o.rrCount != 20000 || o.repeat != 1 {
				return "defaults changed"
			}
			return ""
		}},
		{args: []string{"--quick", "--duration=2s"}, check: func(o *options) string {
			if o.duration != 2*time.Second || o.idleConns != 500 || o.rrCount != 2000 {
				return "quick must keep explicit flags and shorten the rest"
			}
			return ""
		}},
		{args: []string{"--skip=bulk,idle"}, check: func(o *options) string {
			if !o.skips(mBulk1) || !o.skips(mBulk4) || !o.skips(mIdle) || o.skips(mRR) {
				return "skip bulk,idle"
			}
			return ""
		}},
		{args: []string{"--only=direct,haproxy"}, check: func(o *options) string {
			if !o.runs("direct") || !o.runs("haproxy") || o.runs("userspace") {
				return "only direct,haproxy"
			}
			return ""
		}},
		{args: []string{"--only=nginx"}, wantErr: true},
		{args: []string{"--skip=latency"}, wantErr: true},
		{args: []string{"--repeat=0"}, wantErr: true},
		{args: []string{"extra"}, wantErr: true},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, &bytes.Buffer{})
		if got := err != nil; got != tt.wantErr {
			t.Errorf("parseFlags(%q) error %v, want error %v", tt.args, err, tt.wantErr)
			continue
		}
		if err == nil && tt.check != nil {
			if msg := tt.check(o); msg != "" {
				t.Errorf("parseFlags(%q): %s: %+v", tt.args, msg, o)
			}
		}
	}
}

// TestSkmemField checks the ss skmem parser: exact prefixes, missing fields.
func TestSkmemField(t *testing.T) {
	const list = "r12,rb131072,t0,tb2626560,f4096,w345,o0,bl0,d7"
	tests := []struct {
		name string
		want int64
	}{
		{"r", 12}, {"rb", 131072}, {"w", 345}, {"d", 7}, {"x", 0},
	}
	for _, tt := range tests {
		if got := skmemField(list, tt.name); got != tt.want {
			t.Errorf("skmemField(%q) = %d, want %d", tt.name, got, tt.want)
		}
	}
}
