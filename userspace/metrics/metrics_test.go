package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/tcpmap/tcpmap/userspace/api"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeSource is a Source whose Status the test sets.
type fakeSource struct {
	mu    sync.Mutex
	st    api.Status
	calls int
}

func (f *fakeSource) Status() api.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.st
}

func (f *fakeSource) set(st api.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
}

// fullStatus exercises every field the collector reads.
func fullStatus() api.Status {
	return api.Status{
		Datapath:       "kernel+userspace",
		DatapathReason: "sockmap available",
		Kernel:         &api.KernelStat{Pairs: 7},
		Problems: []api.Problem{
			{Level: "error", Reason: "UnknownService", Message: "x"},
			{Level: "warning", Reason: "Deprecated", Message: "y"},
			{Level: "warning", Reason: "Deprecated", Message: "z"},
		},
		Listeners: []api.Listener{
			{
				Key:      "0.0.0.0:2222",
				Protocol: "tcp",
				Active:   5,
				Accepted: 100,
				Refusals: map[string]uint64{"proxy_header_invalid": 3},
				BPF:      &api.ListenerBPF{ID: 1, Steered: true, SteeredConnections: 100},
				Mappings: []api.Mapping{
					{
						Name: "default/ssh", Active: 4, Total: 90, Spliced: 60,
						BytesToUpstream: 1000, BytesToClient: 2000,
						KernelBytesToUpstream: 30000, KernelBytesToClient: 40000,
						Refusals:   map[string]uint64{"upstream_unreachable": 2, "max_connections": 1},
						IdleClosed: 6,
						BPF:        &api.MappingBPF{ID: 1, Bytes: 75000, PassedBytes: 5000},
					},
					{Name: "default/git", Active: 1, Total: 10},
				},
			},
			{
				Key:      "[::]:8443",
				Protocol: "tls",
				Active:   0,
				Accepted: 12,
				Refusals: map[string]uint64{"tls_handshake_failed": 4, "unknown_sni": 5},
				// The same mapping on a second listener: distinct series.
				Mappings: []api.Mapping{{Name: "default/ssh", Total: 8, BytesToClient: 9}},
			},
		},
	}
}

func TestStatusMetrics(t *testing.T) {
	tests := []struct {
		name string
		st   api.Status
		want map[string]float64
	}{
		{
			name: "full",
			st:   fullStatus(),
			want: map[string]float64{
				`tcpmap_datapath_info{datapath="kernel+userspace",reason="sockmap available"}`: 1,
				`tcpmap_kernel_spliced_connections`:                                            7,
				`tcpmap_config_problems{level="error"}`:                                        1,
				`tcpmap_config_problems{level="warning"}`:                                      2,

				`tcpmap_listener_active_connections{listener="0.0.0.0:2222"}`:                           5,
				`tcpmap_listener_steered_connections_total{listener="0.0.0.0:2222"}`:                    100,
				`tcpmap_bpf_mapping_bytes_total{listener="0.0.0.0:2222",mapping="default/ssh"}`:         75000,
				`tcpmap_bpf_mapping_passed_bytes_total{listener="0.0.0.0:2222",mapping="default/ssh"}`:  5000,
				`tcpmap_listener_accepted_connections_total{listener="0.0.0.0:2222"}`:                   100,
				`tcpmap_listener_refusals_total{listener="0.0.0.0:2222",reason="proxy_header_invalid"}`: 3,
				`tcpmap_listener_active_connections{listener="[::]:8443"}`:                              0,
				`tcpmap_listener_accepted_connections_total{listener="[::]:8443"}`:                      12,
				`tcpmap_listener_refusals_total{listener="[::]:8443",reason="tls_handshake_failed"}`:    4,
				`tcpmap_listener_refusals_total{listener="[::]:8443",reason="unknown_sni"}`:             5,

				`tcpmap_mapping_active_connections{listener="0.0.0.0:2222",mapping="default/ssh"}`:                                       4,
				`tcpmap_mapping_connections_total{datapath="kernel",listener="0.0.0.0:2222",mapping="default/ssh"}`:                      60,
				`tcpmap_mapping_connections_total{datapath="userspace",listener="0.0.0.0:2222",mapping="default/ssh"}`:                   30,
				`tcpmap_mapping_bytes_total{datapath="kernel",direction="to_upstream",listener="0.0.0.0:2222",mapping="default/ssh"}`:    30000,
				`tcpmap_mapping_bytes_total{datapath="kernel",direction="to_client",listener="0.0.0.0:2222",mapping="default/ssh"}`:      40000,
				`tcpmap_mapping_bytes_total{datapath="userspace",direction="to_upstream",listener="0.0.0.0:2222",mapping="default/ssh"}`: 1000,
				`tcpmap_mapping_bytes_total{datapath="userspace",direction="to_client",listener="0.0.0.0:2222",mapping="default/ssh"}`:   2000,
				`tcpmap_mapping_refusals_total{listener="0.0.0.0:2222",mapping="default/ssh",reason="upstream_unreachable"}`:             2,
				`tcpmap_mapping_refusals_total{listener="0.0.0.0:2222",mapping="default/ssh",reason="max_connections"}`:                  1,
				`tcpmap_mapping_idle_closed_total{listener="0.0.0.0:2222",mapping="default/ssh"}`:                                        6,
				`tcpmap_mapping_active_connections{listener="0.0.0.0:2222",mapping="default/git"}`:                                       1,
				`tcpmap_mapping_connections_total{datapath="kernel",listener="0.0.0.0:2222",mapping="default/git"}`:                      0,
				`tcpmap_mapping_connections_total{datapath="userspace",listener="0.0.0.0:2222",mapping="default/git"}`:                   10,
				`tcpmap_mapping_bytes_total{datapath="kernel",direction="to_upstream",listener="0.0.0.0:2222",mapping="default/git"}`:    0,
				`tcpmap_mapping_bytes_total{datapath="kernel",direction="to_client",listener="0.0.0.0:2222",mapping="default/git"}`:      0,
				`tcpmap_mapping_bytes_total{datapath="userspace",direction="to_upstream",listener="0.0.0.0:2222",mapping="default/git"}`: 0,
				`tcpmap_mapping_bytes_total{datapath="userspace",direction="to_client",listener="0.0.0.0:2222",mapping="default/git"}`:   0,
				`tcpmap_mapping_idle_closed_total{listener="0.0.0.0:2222",mapping="default/git"}`:                                        0,
				`tcpmap_mapping_active_connections{listener="[::]:8443",mapping="default/ssh"}`:                                          0,
				`tcpmap_mapping_connections_total{datapath="kernel",listener="[::]:8443",mapping="default/ssh"}`:                         0,
				`tcpmap_mapping_connections_total{datapath="userspace",listener="[::]:8443",mapping="default/ssh"}`:                      8,
				`tcpmap_mapping_bytes_total{datapath="kernel",direction="to_upstream",listener="[::]:8443",mapping="default/ssh"}`:       0,
				`tcpmap_mapping_bytes_total{datapath="kernel",direction="to_client",listener="[::]:8443",mapping="default/ssh"}`:         0,
				`tcpmap_mapping_bytes_total{datapath="userspace",direction="to_upstream",listener="[::]:8443",mapping="default/ssh"}`:    0,
				`tcpmap_mapping_bytes_total{datapath="userspace",direction="to_client",listener="[::]:8443",mapping="default/ssh"}`:      9,
				`tcpmap_mapping_idle_closed_total{listener="[::]:8443",mapping="default/ssh"}`:                                           0,
			},
		},
		{
			name: "empty userspace-only",
			st:   api.Status{Datapath: "userspace", DatapathReason: "no BPF: not root"},
			want: map[string]float64{
				`tcpmap_datapath_info{datapath="userspace",reason="no BPF: not root"}`: 1,
				`tcpmap_config_problems{level="error"}`:                                0,
				`tcpmap_config_problems{level="warning"}`:                              0,
			},
		},
		{
			name: "spliced ahead of total clamps relayed to zero",
			st: api.Status{
				Datapath: "userspace", DatapathReason: "r",
				Listeners: []api.Listener{{Key: "l", Mappings: []api.Mapping{{Name: "ns/m", Total: 3, Spliced: 5}}}},
			},
			want: map[string]float64{
				`tcpmap_datapath_info{datapath="userspace",reason="r"}`:                                                1,
				`tcpmap_config_problems{level="error"}`:                                                                0,
				`tcpmap_config_problems{level="warning"}`:                                                              0,
				`tcpmap_listener_active_connections{listener="l"}`:                                                     0,
				`tcpmap_listener_accepted_connections_total{listener="l"}`:                                             0,
				`tcpmap_mapping_active_connections{listener="l",mapping="ns/m"}`:                                       0,
				`tcpmap_mapping_connections_total{datapath="kernel",listener="l",mapping="ns/m"}`:                      5,
				`tcpmap_mapping_connections_total{datapath="userspace",listener="l",mapping="ns/m"}`:                   0,
				`tcpmap_mapping_bytes_total{datapath="kernel",direction="to_upstream",listener="l",mapping="ns/m"}`:    0,
				`tcpmap_mapping_bytes_total{datapath="kernel",direction="to_client",listener="l",mapping="ns/m"}`:      0,
				`tcpmap_mapping_bytes_total{datapath="userspace",direction="to_upstream",listener="l",mapping="ns/m"}`: 0,
				`tcpmap_mapping_bytes_total{datapath="userspace",direction="to_client",listener="l",mapping="ns/m"}`:   0,
				`tcpmap_mapping_idle_closed_total{listener="l",mapping="ns/m"}`:                                        0,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := New(&fakeSource{st: tt.st}, Options{})
			fams := scrapeMetrics(t, h)
			got := tcpmapSeries(t, fams)
			for k, w := range tt.want {
				g, ok := got[k]
				if !ok {
					t.Errorf("missing series %s (want %v)", k, w)
					continue
				}
				if g != w {
					t.Errorf("%s = %v, want %v", k, g, w)
				}
			}
			for k, g := range got {
				if _, ok := tt.want[k]; !ok {
					t.Errorf("unexpected series %s = %v", k, g)
				}
			}
		})
	}
}

func TestMetricTypes(t *testing.T) {
	h := New(&fakeSource{st: fullStatus()}, Options{})
	h.DialObserver().ObserveDial("default/ssh", time.Millisecond, nil)
	fams := scrapeMetrics(t, h)
	want := map[string]dto.MetricType{
		"tcpmap_mapping_active_connections":          dto.MetricType_GAUGE,
		"tcpmap_mapping_connections_total":           dto.MetricType_COUNTER,
		"tcpmap_mapping_bytes_total":                 dto.MetricType_COUNTER,
		"tcpmap_mapping_refusals_total":              dto.MetricType_COUNTER,
		"tcpmap_mapping_idle_closed_total":           dto.MetricType_COUNTER,
		"tcpmap_listener_active_connections":         dto.MetricType_GAUGE,
		"tcpmap_listener_accepted_connections_total": dto.MetricType_COUNTER,
		"tcpmap_listener_refusals_total":             dto.MetricType_COUNTER,
		"tcpmap_config_problems":                     dto.MetricType_GAUGE,
		"tcpmap_datapath_info":                       dto.MetricType_GAUGE,
		"tcpmap_kernel_spliced_connections":          dto.MetricType_GAUGE,
		"tcpmap_bpf_mapping_bytes_total":             dto.MetricType_COUNTER,
		"tcpmap_bpf_mapping_passed_bytes_total":      dto.MetricType_COUNTER,
		"tcpmap_listener_steered_connections_total":  dto.MetricType_COUNTER,
		"tcpmap_upstream_connect_duration_seconds":   dto.MetricType_HISTOGRAM,
		// The runtime collectors share the registry.
		"go_goroutines":              dto.MetricType_GAUGE,
		"process_start_time_seconds": dto.MetricType_GAUGE,
	}
	for name, w := range want {
		f, ok := fams[name]
		if !ok {
			t.Errorf("family %s missing", name)
			continue
		}
		if got := f.GetType(); got != w {
			t.Errorf("%s type = %v, want %v", name, got, w)
		}
		if f.GetHelp() == "" {
			t.Errorf("%s has no help text", name)
		}
	}
}

// TestNamingConventions runs Prometheus' own linter (units, _total,
// help text) over every tcpmap_ family.
func TestNamingConventions(t *testing.T) {
	h := New(&fakeSource{st: fullStatus()}, Options{})
	h.DialObserver().ObserveDial("default/ssh", time.Millisecond, nil)
	fams := scrapeMetrics(t, h)
	var mine []*dto.MetricFamily
	for _, name := range keys(fams) {
		if strings.HasPrefix(name, "tcpmap_") {
			mine = append(mine, fams[name])
		}
	}
	if len(mine) != 15 {
		t.Errorf("got %d tcpmap_ families, want 15", len(mine))
	}
	problems, err := promlint.NewWithMetricFamilies(mine).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

// TestReadsStatusPerScrape checks values are taken at scrape time, not
// cached from construction.
func TestReadsStatusPerScrape(t *testing.T) {
	src := &fakeSource{st: api.Status{Datapath: "userspace", Listeners: []api.Listener{{Key: "l", Accepted: 1}}}}
	h := New(src, Options{})
	const series = `tcpmap_listener_accepted_connections_total{listener="l"}`
	if got := tcpmapSeries(t, scrapeMetrics(t, h))[series]; got != 1 {
		t.Fatalf("first scrape: %s = %v, want 1", series, got)
	}
	src.set(api.Status{Datapath: "userspace", Listeners: []api.Listener{{Key: "l", Accepted: 42}}})
	if got := tcpmapSeries(t, scrapeMetrics(t, h))[series]; got != 42 {
		t.Fatalf("second scrape: %s = %v, want 42", series, got)
	}
	src.mu.Lock()
	calls := src.calls
	src.mu.Unlock()
	if calls != 2 {
		t.Errorf("Status called %d times for 2 scrapes, want 2", calls)
	}
}

func TestDialHistogram(t *testing.T) {
	h := New(&fakeSource{}, Options{})
	d := h.DialObserver()
	d.ObserveDial("default/ssh", 3*time.Millisecond, nil)
	d.ObserveDial("default/ssh", 3*time.Millisecond, nil)
	d.ObserveDial("default/ssh", 2*time.Second, errors.New("connection refused"))
	d.ObserveDial("default/git", 50*time.Microsecond, nil)

	type bucket struct {
		le    float64
		count uint64
	}
	tests := []struct {
		labels  string
		count   uint64
		sum     float64
		buckets []bucket // cumulative counts at chosen bounds
	}{
		{`mapping="default/ssh",result="ok"`, 2, 0.006, []bucket{{0.0025, 0}, {0.005, 2}, {10, 2}}},
		{`mapping="default/ssh",result="error"`, 1, 2, []bucket{{1, 0}, {2.5, 1}, {10, 1}}},
		{`mapping="default/git",result="ok"`, 1, 0.00005, []bucket{{0.0001, 1}}},
	}
	hists := histograms(t, scrapeMetrics(t, h)["tcpmap_upstream_connect_duration_seconds"])
	if len(hists) != len(tests) {
		t.Errorf("got %d histogram series, want %d: %v", len(hists), len(tests), keys(hists))
	}
	for _, tt := range tests {
		hist, ok := hists[tt.labels]
		if !ok {
			t.Errorf("no histogram {%s}; have %v", tt.labels, keys(hists))
			continue
		}
		if got := hist.GetSampleCount(); got != tt.count {
			t.Errorf("{%s} count = %d, want %d", tt.labels, got, tt.count)
		}
		if got := hist.GetSampleSum(); math.Abs(got-tt.sum) > 1e-9 {
			t.Errorf("{%s} sum = %v, want %v", tt.labels, got, tt.sum)
		}
		if got, want := len(hist.GetBucket()), len(connectBuckets)+1; got != want { // +Inf too
			t.Errorf("{%s} has %d buckets, want %d", tt.labels, got, want)
		}
		for _, b := range tt.buckets {
			found := false
			for _, hb := range hist.GetBucket() {
				if hb.GetUpperBound() == b.le {
					found = true
					if got := hb.GetCumulativeCount(); got != b.count {
						t.Errorf("{%s} bucket le=%v = %d, want %d", tt.labels, b.le, got, b.count)
					}
				}
			}
			if !found {
				t.Errorf("{%s} has no bucket le=%v", tt.labels, b.le)
			}
		}
	}

	d.Forget("default/ssh")
	hists = histograms(t, scrapeMetrics(t, h)["tcpmap_upstream_connect_duration_seconds"])
	if got, want := keys(hists), []string{`mapping="default/git",result="ok"`}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("after Forget: series %v, want %v", got, want)
	}

	var nilObs *DialObserver
	nilObs.ObserveDial("x", time.Second, nil) // must not panic
	nilObs.Forget("x")
}

func TestProbes(t *testing.T) {
	h := New(&fakeSource{}, Options{})
	srv := httptest.NewServer(h)
	defer srv.Close()

	type probe struct {
		path     string
		wantCode int
		wantBody string
	}
	check := func(step string, probes ...probe) {
		t.Helper()
		for _, p := range probes {
			code, body := get(t, srv, p.path)
			if code != p.wantCode || (p.wantBody != "" && body != p.wantBody) {
				t.Errorf("%s: GET %s = %d %q, want %d %q", step, p.path, code, body, p.wantCode, p.wantBody)
			}
		}
	}
	notReady := probe{"/readyz", http.StatusServiceUnavailable, "not ready: configuration not loaded yet\n"}
	healthy := probe{"/healthz", http.StatusOK, "ok\n"}

	check("start", healthy, notReady, probe{"/nope", http.StatusNotFound, ""})
	h.SetReady(true)
	check("ready", healthy, probe{"/readyz", http.StatusOK, "ready\n"})
	h.SetReady(false)
	check("unready again", healthy, notReady)
}

// TestConcurrentScrapes runs scrapes, observations and readiness flips
// together for the race detector.
func TestConcurrentScrapes(t *testing.T) {
	src := &fakeSource{st: fullStatus()}
	h := New(src, Options{})
	srv := httptest.NewServer(h)
	defer srv.Close()

	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 5 {
				h.DialObserver().ObserveDial(fmt.Sprintf("ns/m%d", i), time.Duration(j)*time.Millisecond, nil)
				h.SetReady(j%2 == 0)
				if code, _ := get(t, srv, "/metrics"); code != http.StatusOK {
					t.Errorf("GET /metrics = %d", code)
				}
				src.set(fullStatus())
			}
		})
	}
	wg.Wait()
}

// scrapeMetrics serves h on loopback, GETs /metrics and parses the text.
func scrapeMetrics(t *testing.T, h *Handler) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	code, body := get(t, srv, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d: %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// tcpmapSeries flattens the tcpmap_ gauges and counters into
// `name{k="v",...}` (labels sorted) → value.
func tcpmapSeries(t *testing.T, fams map[string]*dto.MetricFamily) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for name, f := range fams {
		if !strings.HasPrefix(name, "tcpmap_") || f.GetType() == dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range f.GetMetric() {
			key := name
			if l := labelString(m); l != "" {
				key += "{" + l + "}"
			}
			if _, dup := out[key]; dup {
				t.Errorf("duplicate series %s", key)
			}
			switch f.GetType() {
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			default:
				t.Errorf("%s: unexpected type %v", name, f.GetType())
			}
		}
	}
	return out
}

func histograms(t *testing.T, f *dto.MetricFamily) map[string]*dto.Histogram {
	t.Helper()
	out := map[string]*dto.Histogram{}
	if f == nil {
		return out
	}
	for _, m := range f.GetMetric() {
		out[labelString(m)] = m.GetHistogram()
	}
	return out
}

func labelString(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
