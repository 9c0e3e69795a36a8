// Command bench measures tcpmapd against a direct connection, HAProxy and a
// plain Go relay on loopback, in one run, and prints a table with ratios to
// direct and issue 4's targets next to tcpmapd's numbers.
//
//	go run ./test/bench [--duration 3s] [--only direct,userspace] [--skip idle] [--quick] [--json FILE]
//
// Benchmarks are measured, not judged: a missed target never fails the run.
// The exit code is non-zero only when the harness itself breaks (2 for a
// usage error, 130 when interrupted).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

func main() {
	if runChild() {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Metric groups, as --skip names them.
const (
	mBulk1 = "bulk1" // throughput, 1 stream, and CPU per GB
	mBulk4 = "bulk4" // throughput, 4 streams, and CPU per GB
	mRR    = "rr"    // request/response latency
	mConns = "conns" // connections per second
	mIdle  = "idle"  // RSS per idle connection
	mSlow  = "slow"  // kernel memory under a slow reader
)

// metricGroups is the order of the measurements: idle first, on a fresh
// process whose RSS no earlier test has grown; connections/s last, because
// a proxy that runs out of ports or descriptors there would fail the rest.
var metricGroups = []string{mIdle, mRR, mBulk1, mBulk4, mSlow, mConns}

// options are the flags.
type options struct {
	duration    time.Duration
	warmup      time.Duration
	only        []string
	skip        []string
	quick       bool
	jsonPath    string
	rrCount     int
	rrWarm      int
	connWorkers int
	idleConns   int
	idleSettle  time.Duration
	kmemBound   float64
	tcpmapd     string
	tcpmapdArgs []string
	haproxy     string
	keep        bool
	repeat      int
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "measuring window of each bulk, connections/s and slow-reader test")
	fs.StringSliceVar(&o.only, "only", nil, "proxies to run (direct, userspace, ebpf, ebpf-deferred, haproxy, gorelay); default all")
	fs.StringSliceVar(&o.skip, "skip", nil, "metrics to skip (bulk1, bulk4, bulk, rr, conns, idle, slow)")
	fs.BoolVar(&o.quick, "quick", false, "short runs for a smoke test: 0.5 s windows, 2,000 round trips, 500 idle connections")
	fs.StringVar(&o.jsonPath, "json", "", "also write the results to this file as JSON")
	fs.IntVar(&o.rrCount, "rr-count", 20000, "measured 64-byte round trips (after rr-count/10 warm-up ones)")
	fs.IntVar(&o.connWorkers, "conn-workers", 4, "concurrent connect/exchange/close loops in the connections/s test")
	fs.IntVar(&o.idleConns, "idle-conns", 10000, "idle connections opened through each proxy for the RSS test")
	fs.Float64Var(&o.kmemBound, "kmem-bound-mib", 4, "tcpmapd's per-pair kernel memory bound, for the target line")
	fs.StringVar(&o.tcpmapd, "tcpmapd", "", "tcpmapd binary to run (default: build ./cmd/tcpmapd into a temp dir)")
	fs.StringArrayVar(&o.tcpmapdArgs, "tcpmapd-arg", nil, "extra tcpmapd argument, both datapaths (repeatable)")
	fs.StringVar(&o.haproxy, "haproxy", "", "haproxy binary (default: haproxy on PATH or /usr/sbin/haproxy)")
	fs.IntVar(&o.repeat, "repeat", 1, "run the bulk, latency and connections/s tests this many times and report the median")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir (configs and proxy logs) and print its path")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, p := range o.only {
		if !slices.ContainsFunc(proxyKinds, func(k proxyKind) bool { return k.key == p }) {
			return nil, fmt.Errorf("--only %q: want some of direct, userspace, ebpf, ebpf-deferred, haproxy, gorelay", p)
		}
	}
	var skip []string
	for _, m := range o.skip {
		switch {
		case m == "bulk":
			skip = append(skip, mBulk1, mBulk4)
		case slices.Contains(metricGroups, m):
			skip = append(skip, m)
		default:
			return nil, fmt.Errorf("--skip %q: want some of bulk1, bulk4, bulk, rr, conns, idle, slow", m)
		}
	}
	o.skip = skip
	if o.quick {
		if !fs.Changed("duration") {
			o.duration = 500 * time.Millisecond
		}
		if !fs.Changed("rr-count") {
			o.rrCount = 2000
		}
		if !fs.Changed("idle-conns") {
			o.idleConns = 500
		}
		if !fs.Changed("conn-workers") {
			o.connWorkers = 2
		}
	}
	if o.duration <= 0 || o.rrCount <= 0 || o.connWorkers <= 0 || o.idleConns <= 0 || o.repeat <= 0 {
		return nil, errors.New("--duration, --rr-count, --conn-workers, --idle-conns and --repeat must be positive")
	}
	o.warmup = min(o.duration/10, 300*time.Millisecond)
	o.rrWarm = max(o.rrCount/10, 100)
	o.idleSettle = 500 * time.Millisecond
	if o.quick {
		o.idleSettle = 200 * time.Millisecond
	}
	return o, nil
}

func (o *options) runs(key string) bool { return len(o.only) == 0 || slices.Contains(o.only, key) }
func (o *options) skips(m string) bool  { return slices.Contains(o.skip, m) }

// run is the whole bench; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	rep, err := bench(ctx, o, stderr)
	if rep != nil {
		writeReport(stdout, rep, o)
		if o.jsonPath != "" {
			if jerr := writeJSON(o.jsonPath, rep); jerr != nil && err == nil {
				err = jerr
			}
		}
	}
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "bench: interrupted")
		return 130
	case err != nil:
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	return 0
}

// bench starts the upstream and each selected proxy in turn, measures it
// and stops it. The error is for the harness breaking (setup, or a
// measurement of the direct path); a proxy that cannot run or errs is
// recorded in its row.
func bench(ctx context.Context, o *options, stderr io.Writer) (*report, error) {
	rep := &report{
		Started:  time.Now().UTC().Format(time.RFC3339),
		Kernel:   kernelRelease(),
		CPUs:     runtime.NumCPU(),
		Duration: o.duration.Seconds(),
		Quick:    o.quick,
	}
	rep.NoFile, rep.IdleConns = raiseNoFile(o.idleConns, stderr)
	o.idleConns = rep.IdleConns

	tmp, err := os.MkdirTemp("", "tcpmap-bench-")
	if err != nil {
		return nil, err
	}
	if o.keep {
		defer fmt.Fprintf(stderr, "bench: configs and logs kept in %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	up, err := startUpstream(filepath.Join(tmp, "idlehold.log"))
	if err != nil {
		return nil, err
	}
	defer up.close()
	e := &env{up: up, tmp: tmp, opts: o, stderr: stderr, nofile: rep.NoFile}

	if o.runs("haproxy") {
		if p, err := haproxyPath(o.haproxy); err != nil {
			fmt.Fprintf(stderr, "bench: %v; skipping the HAProxy column\n", err)
		} else {
			rep.HAProxy = haproxyVersion(ctx, p)
		}
	}

	// Two passes: connections/s for every proxy only after everything
	// else. Its churn leaves thousands of TIME_WAIT sockets for a minute; a
	// proxy that cannot reuse their ports would otherwise break the next
	// proxy's measurements, not only its own connection rate.
	var harnessErr error
	results := map[string]*result{}
	for pass, groups := range [][]string{without(metricGroups, mConns), {mConns}} {
		for _, k := range proxyKinds {
			if !o.runs(k.key) || ctx.Err() != nil {
				continue
			}
			res := results[k.key]
			if pass > 0 && (res == nil || res.Status != statusOK || !wantsAny(o, groups)) {
				continue
			}
			res = measureProxy(ctx, e, k, o, groups, res, stderr)
			if results[k.key] == nil {
				results[k.key] = res
				rep.Results = append(rep.Results, res)
			}
		}
	}
	for _, res := range rep.Results {
		if res.Proxy == "direct" && len(res.Errors) > 0 && harnessErr == nil {
			harnessErr = fmt.Errorf("direct path: %s", res.errorText())
		}
		if res.Status == statusError && errors.Is(res.startErr, errHarness) && harnessErr == nil {
			harnessErr = res.startErr
		}
	}
	rep.Targets = evalTargets(rep, o)
	return rep, harnessErr
}

func without(list []string, x string) []string {
	return slices.DeleteFunc(slices.Clone(list), func(s string) bool { return s == x })
}

// wantsAny reports whether any of groups is not skipped.
func wantsAny(o *options, groups []string) bool {
	return slices.ContainsFunc(groups, func(m string) bool { return !o.skips(m) })
}

// errHarness marks a start failure that is the bench's own (cannot build,
// cannot write its config), as opposed to a proxy that cannot run.
var errHarness = errors.New("harness")

// measureProxy starts one proxy, measures groups and stops it. A second
// pass adds to the first pass's res; a proxy that no longer starts then
// counts as an error of those groups.
func measureProxy(ctx context.Context, e *env, k proxyKind, o *options, groups []string, res *result, stderr io.Writer) *result {
	fmt.Fprintf(stderr, "bench: %s: starting\n", k.title)
	in, err := k.start(ctx, e)
	if res != nil {
		if err != nil {
			for _, m := range groups {
				res.Errors[m] = "restart for this test: " + err.Error()
			}
			fmt.Fprintf(stderr, "bench: %s: %v\n", k.title, err)
			return res
		}
	} else {
		res = &result{Proxy: k.key, Title: k.title, Metrics: map[string]float64{}, Errors: map[string]string{}}
	}
	switch {
	case errors.Is(err, errUnavailable):
		res.Status = statusUnavailable
		res.Reason = strings.TrimPrefix(err.Error(), "unavailable: ")
		fmt.Fprintf(stderr, "bench: %s: %v\n", k.title, err)
		return res
	case err != nil:
		res.Status = statusError
		res.Reason = err.Error()
		res.startErr = fmt.Errorf("%s: %w: %w", k.title, errHarness, err)
		fmt.Fprintf(stderr, "bench: %s: %v\n", k.title, err)
		return res
	}
	defer in.stop()
	res.Status = statusOK
	pid := in.pid()

	var acc bulkTotals
	troubled := false
	for _, m := range groups {
		if o.skips(m) || ctx.Err() != nil {
			continue
		}
		if m == mIdle && pid == 0 {
			continue // no proxy process: nothing to measure
		}
		fmt.Fprintf(stderr, "bench: %s: %s\n", k.title, m)
		mctx, cancel := context.WithTimeout(ctx, metricTimeout(m, o))
		failed, err := measureGroup(mctx, m, e, in, o, res, &acc)
		cancel()
		troubled = troubled || failed
		if err != nil && ctx.Err() == nil {
			troubled = true
			res.Errors[m] = err.Error()
			fmt.Fprintf(stderr, "bench: %s: %s: %v\n", k.title, m, err)
			if in.proc != nil && in.proc.exited() {
				res.Errors[m] += "; process exited: " + in.proc.exitReason()
				break
			}
		}
	}
	if in.proc != nil && troubled {
		if p := in.proc.lastProblem(); p != "" {
			res.Notes = append(res.Notes, "its last logged problem: "+p)
		}
	}
	if acc.bytes > 0 {
		gb := float64(acc.bytes) / 1e9
		if pid != 0 {
			res.Metrics["proxy_cpu_s_per_gb"] = acc.procCPU / gb
		}
		res.Metrics["machine_cpu_s_per_gb"] = acc.machine / gb
	}
	return res
}

// bulkTotals adds up the bulk windows of one proxy for CPU per GB.
type bulkTotals struct {
	bytes            int64
	procCPU, machine float64
}

// measureGroup runs one metric group (--repeat times for the throughput,
// latency and connection-rate groups, keeping the median) and records it in
// res. failed reports connection attempts that failed without failing the
// measurement.
func measureGroup(ctx context.Context, m string, e *env, in *instance, o *options, res *result, acc *bulkTotals) (failed bool, err error) {
	pid := in.pid()
	switch m {
	case mBulk1, mBulk4:
		streams, key := 1, "bulk1_gbps"
		if m == mBulk4 {
			streams, key = 4, "bulk4_gbps"
		}
		var rates []float64
		for range o.repeat {
			r, err := bulk(ctx, e.up, in.addrs[svcSink], pid, streams, o.warmup, o.duration)
			if err != nil {
				return false, err
			}
			rates = append(rates, r.gbps())
			acc.bytes += r.bytes
			acc.procCPU += r.procCPU
			acc.machine += r.machine
		}
		res.Metrics[key] = median(rates)
	case mRR:
		var p50s, p99s []float64
		for range o.repeat {
			p50, p99, err := latency(ctx, in.addrs[svcEcho], o.rrWarm, o.rrCount)
			if err != nil {
				return false, err
			}
			p50s, p99s = append(p50s, p50), append(p99s, p99)
		}
		res.Metrics["rr_p50_us"], res.Metrics["rr_p99_us"] = median(p50s), median(p99s)
	case mConns:
		var rates []float64
		var bad int64
		var first error
		for range o.repeat {
			rate, n, f, err := connRate(ctx, in.addrs[svcConn], o.connWorkers, o.warmup, o.duration)
			if err != nil {
				return bad > 0, err
			}
			rates, bad = append(rates, rate), bad+n
			if first == nil {
				first = f
			}
		}
		rate := median(rates)
		if rate == 0 && pid == 0 {
			return true, fmt.Errorf("no connection completed on the direct path: %w", first)
		}
		res.Metrics["conns_per_s"] = rate
		if bad > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("connections/s: %d attempts failed, the first with: %v", bad, first))
			failed = true
		}
	case mIdle:
		r, err := idleRSS(ctx, e.up, in.addrs[svcIdle], pid, o.idleConns, o.idleSettle)
		if err != nil {
			return false, err
		}
		res.Metrics["idle_rss_kib_per_conn"] = r.kibPerConn
		res.Metrics["idle_conns"] = float64(r.conns)
		res.Metrics["idle_fds_per_conn"] = r.fdsPerConn
		if r.conns < o.idleConns {
			res.Notes = append(res.Notes, fmt.Sprintf("idle: held %d connections, not %d: it spends %.1f descriptors per connection and its RLIMIT_NOFILE is %d",
				r.conns, o.idleConns, r.fdsPerConn, r.noFile))
		}
	case mSlow:
		r, err := slowReader(ctx, e.up, in.addrs[svcSlow], e.up.addrs[svcSlow], o.duration)
		if err != nil {
			return false, err
		}
		res.Metrics["slow_kernel_mib"] = r.kernelMiB
		if r.queuedMiB >= 0 {
			res.Metrics["slow_queued_mib"] = r.queuedMiB
		}
		res.Metrics["slow_written_mib"] = r.writtenMiB
		res.Metrics["slow_read_mib"] = r.readMiB
	}
	return failed, nil
}

// median of a non-empty list (the lower middle for an even count).
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// metricTimeout bounds one measurement so that a stuck proxy costs seconds,
// not the run.
func metricTimeout(m string, o *options) time.Duration {
	switch m {
	case mRR:
		// Even at 1 ms a round trip the run ends.
		return time.Duration(o.repeat*(o.rrCount+o.rrWarm))*time.Millisecond + 20*time.Second
	case mIdle:
		return 60*time.Second + time.Duration(o.idleConns)*time.Millisecond
	case mSlow:
		return o.duration + 25*time.Second // includes settling the baseline
	default:
		return time.Duration(o.repeat)*(o.warmup+o.duration+5*time.Second) + 15*time.Second
	}
}

// raiseNoFile raises RLIMIT_NOFILE as far as it may for the bench and,
// inherited, for every proxy it starts: a proxy holds two descriptors per
// idle connection. Without CAP_SYS_RESOURCE the hard limit stays, and the
// idle test opens as many connections as a proxy can then hold, and says so.
func raiseNoFile(idle int, stderr io.Writer) (limit uint64, idleConns int) {
	const ample = 1 << 17
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, idle
	}
	if rl.Max < ample && syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: ample, Max: ample}) == nil {
		rl = syscall.Rlimit{Cur: ample, Max: ample}
	}
	// Called even when nothing changes: after syscall.Setrlimit, os/exec
	// hands children this limit instead of the one the process started with.
	rl.Cur = rl.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	if fit := int((rl.Max - 256) / 2); idle > fit {
		fmt.Fprintf(stderr, "bench: RLIMIT_NOFILE is %d and cannot be raised (no CAP_SYS_RESOURCE): the idle test opens %d connections instead of %d\n",
			rl.Max, fit, idle)
		idle = fit
	}
	return rl.Max, idle
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
