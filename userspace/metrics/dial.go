package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// connectBuckets span 100µs (loopback, same node) to 10s (an upstream that
// answers only after SYN retransmits), roughly 1-2.5-5 per decade.
var connectBuckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5, 10,
}

// DialObserver records how long connecting to an upstream took. A nil
// *DialObserver is valid and records nothing, so the relay can hold one
// unconditionally.
type DialObserver struct {
	hist *prometheus.HistogramVec
}

func newDialObserver() *DialObserver {
	return &DialObserver{hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tcpmap_upstream_connect_duration_seconds",
		Help:    "Time to establish the TCP connection to an upstream, by mapping and result.",
		Buckets: connectBuckets,
	}, []string{"mapping", "result"})}
}

// ObserveDial records one upstream connect attempt for mapping
// ("namespace/name") that took d; err != nil counts it as result="error".
func (o *DialObserver) ObserveDial(mapping string, d time.Duration, err error) {
	if o == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	o.hist.WithLabelValues(mapping, result).Observe(d.Seconds())
}

// Forget drops mapping's series, so a removed mapping stops being exported.
func (o *DialObserver) Forget(mapping string) {
	if o == nil {
		return
	}
	o.hist.DeletePartialMatch(prometheus.Labels{"mapping": mapping})
}
