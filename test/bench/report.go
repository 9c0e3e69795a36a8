package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
)

// Row status.
const (
	statusOK          = "ok"
	statusUnavailable = "unavailable"
	statusError       = "error"
)

// report is one run, as printed and as written with --json.
type report struct {
	Started   string    `json:"started"`
	Kernel    string    `json:"kernel"`
	CPUs      int       `json:"cpus"`
	Duration  float64   `json:"duration_s"`
	Quick     bool      `json:"quick"`
	NoFile    uint64    `json:"rlimit_nofile"`
	IdleConns int       `json:"idle_conns"`
	HAProxy   string    `json:"haproxy_version,omitempty"`
	Results   []*result `json:"results"`
	Targets   []target  `json:"targets,omitempty"`
}

// result is one proxy's row. Metrics keys are the column keys below plus
// idle_conns, slow_written_mib and slow_read_mib; a metric that was skipped,
// failed or does not apply is absent.
type result struct {
	Proxy   string             `json:"proxy"`
	Title   string             `json:"title"`
	Status  string             `json:"status"`
	Reason  string             `json:"reason,omitempty"`
	Metrics map[string]float64 `json:"metrics"`
	Errors  map[string]string  `json:"errors,omitempty"`
	Notes   []string           `json:"notes,omitempty"`

	startErr error
}

func (r *result) errorText() string {
	var parts []string
	for m, e := range r.Errors {
		parts = append(parts, m+": "+e)
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func (r *result) metric(key string) (float64, bool) {
	if r == nil || r.Status != statusOK {
		return 0, false
	}
	v, ok := r.Metrics[key]
	return v, ok
}

func (rep *report) find(proxy string) *result {
	for _, r := range rep.Results {
		if r.Proxy == proxy {
			return r
		}
	}
	return nil
}

// column is one metric of the table.
type column struct {
	key    string
	header string
	group  string // the --skip name that produces it
	format string
	ratio  bool // show the ratio to direct
}

var columns = []column{
	{key: "bulk1_gbps", header: "1 stream Gbit/s", group: mBulk1, format: "%.1f", ratio: true},
	{key: "bulk4_gbps", header: "4 streams Gbit/s", group: mBulk4, format: "%.1f", ratio: true},
	{key: "proxy_cpu_s_per_gb", header: "proxy CPU s/GB", group: "bulk", format: "%.3f"},
	{key: "machine_cpu_s_per_gb", header: "machine CPU s/GB", group: "bulk", format: "%.2f", ratio: true},
	{key: "rr_p50_us", header: "rr p50 µs", group: mRR, format: "%.1f", ratio: true},
	{key: "rr_p99_us", header: "rr p99 µs", group: mRR, format: "%.1f", ratio: true},
	{key: "conns_per_s", header: "conn/s", group: mConns, format: "%.0f", ratio: true},
	{key: "idle_rss_kib_per_conn", header: "idle RSS KiB/conn", group: mIdle, format: "%.2f"},
	{key: "idle_fds_per_conn", header: "idle fds/conn", group: mIdle, format: "%.1f"},
	{key: "slow_kernel_mib", header: "slow reader: kernel MiB", group: mSlow, format: "%.1f", ratio: true},
	{key: "slow_queued_mib", header: "slow reader: socket queues MiB", group: mSlow, format: "%.1f", ratio: true},
}

func (c column) cell(r, direct *result) string {
	v, ok := r.metric(c.key)
	if !ok {
		if r.Errors[c.group] != "" || (c.group == "bulk" && (r.Errors[mBulk1] != "" || r.Errors[mBulk4] != "")) {
			return "error"
		}
		return "–"
	}
	s := fmt.Sprintf(c.format, v)
	if d, ok := direct.metric(c.key); ok && c.ratio && r != direct && d > 0 {
		s += fmt.Sprintf(" (%.2f×)", v/d)
	}
	return s
}

// writeReport prints the Markdown table, the targets and the notes.
func writeReport(w io.Writer, rep *report, o *options) {
	direct := rep.find("direct")
	fmt.Fprintf(w, "\n## tcpmap bench: loopback, kernel %s, %d CPUs, %gs windows%s\n\n",
		rep.Kernel, rep.CPUs, rep.Duration, map[bool]string{true: " (quick)", false: ""}[rep.Quick])
	hdr := []string{"proxy"}
	for _, c := range columns {
		hdr = append(hdr, c.header)
	}
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(hdr, " | "), strings.Repeat("---|", len(hdr)))
	for _, r := range rep.Results {
		cells := []string{r.Title}
		switch r.Status {
		case statusOK:
			for _, c := range columns {
				cells = append(cells, c.cell(r, direct))
			}
		default:
			cells = append(cells, r.Status+": "+mdEscape(r.Reason))
			for range columns[1:] {
				cells = append(cells, "–")
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	fmt.Fprintf(w, "\nRatios in parentheses are to direct. CPU per GB (10⁹ bytes received by the sink) is over both bulk windows; "+
		"machine CPU includes the bench's own clients and servers. Idle RSS and fds: growth of the proxy's VmRSS and open descriptors per connection "+
		"over %d idle connections (fewer where its RLIMIT_NOFILE does not allow them; see notes). "+
		"Slow reader: a sink reading 64 KiB every 20 ms, one fast writer, %gs; kernel = peak growth of TCP memory in /proc/net/sockstat "+
		"(machine-wide), socket queues = peak receive+send queue bytes of the test's sockets (ss -tm).\n", rep.IdleConns, rep.Duration)
	if rep.HAProxy != "" {
		fmt.Fprintf(w, "HAProxy: %s.\n", rep.HAProxy)
	}

	if len(rep.Targets) > 0 {
		var cols []string
		for _, t := range rep.Targets {
			if !containsStr(cols, t.Proxy) {
				cols = append(cols, t.Proxy)
			}
		}
		fmt.Fprintf(w, "\n### Issue 4 targets (informative: benchmarks are measured, a miss never fails the run)\n\n")
		fmt.Fprintf(w, "| target |")
		for _, c := range cols {
			fmt.Fprintf(w, " %s |", rep.find(c).Title)
		}
		fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("---|", len(cols)))
		var names []string
		for _, t := range rep.Targets {
			if !containsStr(names, t.Name) {
				names = append(names, t.Name)
			}
		}
		for _, n := range names {
			fmt.Fprintf(w, "| %s |", n)
			for _, c := range cols {
				cell := "–"
				for _, t := range rep.Targets {
					if t.Name == n && t.Proxy == c {
						cell = t.cell()
					}
				}
				fmt.Fprintf(w, " %s |", cell)
			}
			fmt.Fprintln(w)
		}
	}

	var notes []string
	for _, r := range rep.Results {
		for _, m := range metricGroups {
			if e, ok := r.Errors[m]; ok {
				notes = append(notes, fmt.Sprintf("%s: %s failed: %s", r.Title, m, e))
			}
		}
		for _, n := range r.Notes {
			notes = append(notes, r.Title+": "+n)
		}
		if v, ok := r.metric("slow_written_mib"); ok {
			rd, _ := r.metric("slow_read_mib")
			notes = append(notes, fmt.Sprintf("%s: slow reader: writer sent %.1f MiB, reader read %.1f MiB", r.Title, v, rd))
		}
	}
	if len(o.skip) > 0 {
		notes = append(notes, "skipped: "+strings.Join(o.skip, ", "))
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range notes {
			fmt.Fprintln(w, "- "+n)
		}
	}
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// target is one of issue 4's targets evaluated for one tcpmapd datapath.
type target struct {
	Name      string  `json:"name"`
	Proxy     string  `json:"proxy"`
	Value     float64 `json:"value,omitempty"`
	Threshold float64 `json:"threshold,omitempty"`
	Unit      string  `json:"unit,omitempty"`
	Op        string  `json:"op,omitempty"` // ≥ or ≤
	// Verdict is pass, miss, or n/a (not measured, or the reference it is
	// relative to is missing; Why says which).
	Verdict string `json:"verdict"`
	Why     string `json:"why,omitempty"`
}

func (t target) cell() string {
	if t.Verdict == "n/a" {
		return "n/a: " + t.Why
	}
	return fmt.Sprintf("%s %s vs %s %s: **%s**", fmtNum(t.Value), t.Unit, t.Op, fmtNum(t.Threshold), t.Verdict)
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 0.1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// evalTargets checks issue 4's targets against each tcpmapd row that was
// selected (an unavailable one gets n/a everywhere).
func evalTargets(rep *report, o *options) []target {
	direct, haproxy, userspace := rep.find("direct"), rep.find("haproxy"), rep.find("userspace")
	var out []target
	for _, key := range []string{"userspace", "ebpf"} {
		r := rep.find(key)
		if r == nil {
			continue
		}
		na := func(name, why string) { out = append(out, target{Name: name, Proxy: key, Verdict: "n/a", Why: why}) }
		// check compares one metric with a threshold computed from the
		// references of the same run; a missing reference gives n/a.
		check := func(name, key2, unit string, max bool, threshold func() (float64, string)) {
			v, ok := r.metric(key2)
			if !ok {
				if r.Status != statusOK {
					na(name, r.Status)
				} else {
					na(name, "not measured")
				}
				return
			}
			th, why := threshold()
			if why != "" {
				na(name, why)
				return
			}
			t := target{Name: name, Proxy: key, Value: v, Threshold: th, Unit: unit, Op: "≥", Verdict: "pass"}
			if max {
				t.Op = "≤"
				if v > th {
					t.Verdict = "miss"
				}
			} else if v < th {
				t.Verdict = "miss"
			}
			out = append(out, t)
		}
		bulkTarget := func(metricKey string) func() (float64, string) {
			return func() (float64, string) {
				h, ok := haproxy.metric(metricKey)
				if !ok {
					return 0, "no HAProxy number"
				}
				th := 1.7 * h
				if u, ok := userspace.metric(metricKey); ok && u > th {
					th = u
				}
				return th, ""
			}
		}
		ofDirect := func(metricKey string, f float64) func() (float64, string) {
			return func() (float64, string) {
				d, ok := direct.metric(metricKey)
				if !ok {
					return 0, "no direct number"
				}
				return f * d, ""
			}
		}
		constant := func(v float64) func() (float64, string) { return func() (float64, string) { return v, "" } }

		check("bulk 1 stream ≥ userspace relay and ≥ 1.7× HAProxy", "bulk1_gbps", "Gbit/s", false, bulkTarget("bulk1_gbps"))
		check("bulk 4 streams ≥ userspace relay and ≥ 1.7× HAProxy", "bulk4_gbps", "Gbit/s", false, bulkTarget("bulk4_gbps"))
		check("rr p50 ≤ 2.0× direct", "rr_p50_us", "µs", true, ofDirect("rr_p50_us", 2.0))
		check("rr p99 ≤ 8× direct", "rr_p99_us", "µs", true, ofDirect("rr_p99_us", 8.0))
		check("daemon CPU ≤ 0.02 s/GB", "proxy_cpu_s_per_gb", "s/GB", true, constant(0.02))
		check("conn/s ≥ HAProxy", "conns_per_s", "/s", false, func() (float64, string) {
			h, ok := haproxy.metric("conns_per_s")
			if !ok {
				return 0, "no HAProxy number"
			}
			return h, ""
		})
		check("idle RSS ≤ 2 KiB/conn", "idle_rss_kib_per_conn", "KiB", true, constant(2))
		check(fmt.Sprintf("slow-reader kernel memory ≤ bound (%g MiB)", o.kmemBound), "slow_kernel_mib", "MiB", true, constant(o.kmemBound))
	}
	return out
}

func writeJSON(path string, rep *report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--json %s: %w", path, err)
	}
	return nil
}
