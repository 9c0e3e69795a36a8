// Package metrics serves tcpmapd's Prometheus endpoint (/metrics) and its
// health probes (/healthz, /readyz).
//
// The connection counters are not kept here: the collector reads the same
// api.Status the admin API serves, at scrape time, so `tcpmapctl status` and
// a scrape can never disagree and the relay pays nothing per connection for
// metrics. Only the upstream connect latency, which Status does not carry,
// is observed directly (DialObserver).
package metrics

import (
	"io"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/userspace/api"
)

// DefaultAddr is where tcpmapd serves metrics unless --metrics-addr says
// otherwise. Loopback, because the endpoint is unauthenticated.
const DefaultAddr = "127.0.0.1:9102"

// Source provides the node's state at scrape time. The daemon's admin backend
// implements it. Status may be called concurrently by overlapping scrapes.
type Source interface {
	Status() api.Status
}

// Options configures a Handler.
type Options struct {
	// Logger receives scrape errors. Nil means no logging.
	Logger *zap.Logger
}

// Handler serves /metrics, /healthz and /readyz. It owns a private
// prometheus.Registry, never the global default, so several Handlers (tests,
// embedded use) do not collide.
type Handler struct {
	mux   *http.ServeMux
	ready atomic.Bool
	dials *DialObserver
}

// New returns a Handler that reads src on every scrape. It is not ready until
// SetReady(true).
func New(src Source, opts Options) *Handler {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	reg := prometheus.NewRegistry()
	dials := newDialObserver()
	reg.MustRegister(
		newStatusCollector(src),
		dials.hist,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	h := &Handler{mux: http.NewServeMux(), dials: dials}
	h.mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: zap.NewStdLog(log.Named("metrics")),
		// One bad series (say, a duplicate mapping) must not blank the
		// whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
	}))
	h.mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	h.mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if h.ready.Load() {
			writeText(w, http.StatusOK, "ready\n")
			return
		}
		writeText(w, http.StatusServiceUnavailable, "not ready: configuration not loaded yet\n")
	})
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

// SetReady sets what /readyz answers. The daemon calls SetReady(true) once
// the first configuration is loaded and its listeners are open.
func (h *Handler) SetReady(ready bool) {
	h.ready.Store(ready)
}

// DialObserver returns the upstream connect latency observer whose histogram
// this Handler exports.
func (h *Handler) DialObserver() *DialObserver {
	return h.dials
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, body)
}
