package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpmap/tcpmap/userspace/api"
)

// Datapath label values.
const (
	datapathKernel    = "kernel"
	datapathUserspace = "userspace"
)

// statusCollector turns one api.Status into metrics at scrape time. Every
// value is a const metric: the counters live in the relay and the BPF maps,
// and Status already sums them.
type statusCollector struct {
	src Source

	mappingActive     *prometheus.Desc
	mappingConns      *prometheus.Desc
	mappingBytes      *prometheus.Desc
	mappingRefusals   *prometheus.Desc
	mappingIdleClosed *prometheus.Desc
	listenerActive    *prometheus.Desc
	listenerAccepted  *prometheus.Desc
	listenerRefusals  *prometheus.Desc
	configProblems    *prometheus.Desc
	datapathInfo      *prometheus.Desc
	kernelSpliced     *prometheus.Desc
	bpfMappingBytes   *prometheus.Desc
	bpfMappingPassed  *prometheus.Desc
	listenerSteered   *prometheus.Desc
}

func newStatusCollector(src Source) *statusCollector {
	// A mapping name is unique only per listener (one TCPMapping may be
	// served on several), so mapping series carry both labels.
	m := []string{"listener", "mapping"}
	return &statusCollector{
		src: src,
		mappingActive: prometheus.NewDesc("tcpmap_mapping_active_connections",
			"Connections open now, by listener and mapping.", m, nil),
		mappingConns: prometheus.NewDesc("tcpmap_mapping_connections_total",
			"Connections routed to a mapping, by the datapath that carried them (kernel: handed to the eBPF splice, perhaps after its first bytes were relayed by tcpmapd; userspace: relayed by tcpmapd to the end).",
			append(m, "datapath"), nil),
		mappingBytes: prometheus.NewDesc("tcpmap_mapping_bytes_total",
			"Payload bytes moved, by direction and by the datapath that moved them.",
			append(m, "direction", "datapath"), nil),
		mappingRefusals: prometheus.NewDesc("tcpmap_mapping_refusals_total",
			"Connections refused after a mapping was chosen, by reason.", append(m, "reason"), nil),
		mappingIdleClosed: prometheus.NewDesc("tcpmap_mapping_idle_closed_total",
			"Connections closed because they were idle longer than the mapping's idle timeout.", m, nil),
		listenerActive: prometheus.NewDesc("tcpmap_listener_active_connections",
			"Connections open now on a listener.", []string{"listener"}, nil),
		listenerAccepted: prometheus.NewDesc("tcpmap_listener_accepted_connections_total",
			"Connections accepted by a listener.", []string{"listener"}, nil),
		listenerRefusals: prometheus.NewDesc("tcpmap_listener_refusals_total",
			"Connections refused before a mapping was chosen (PROXY header, TLS handshake, unknown SNI), by reason.",
			[]string{"listener", "reason"}, nil),
		configProblems: prometheus.NewDesc("tcpmap_config_problems",
			"Problems in the current configuration, by level.", []string{"level"}, nil),
		datapathInfo: prometheus.NewDesc("tcpmap_datapath_info",
			"The datapath in use and why; always 1.", []string{"datapath", "reason"}, nil),
		kernelSpliced: prometheus.NewDesc("tcpmap_kernel_spliced_connections",
			"Connections spliced by the kernel datapath now.", nil, nil),
		bpfMappingBytes: prometheus.NewDesc("tcpmap_bpf_mapping_bytes_total",
			"Payload bytes of a mapping's spliced connections, live and closed, both directions, as the BPF map mapping_totals counts them (per CPU, summed).", m, nil),
		bpfMappingPassed: prometheus.NewDesc("tcpmap_bpf_mapping_passed_bytes_total",
			"Of tcpmap_bpf_mapping_bytes_total, the bytes a congested direction handed to userspace (pass mode).", m, nil),
		listenerSteered: prometheus.NewDesc("tcpmap_listener_steered_connections_total",
			"Connections the sk_lookup program assigned to the listener's shared socket (BPF map listener_stats).",
			[]string{"listener"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.mappingActive, c.mappingConns, c.mappingBytes, c.mappingRefusals, c.mappingIdleClosed,
		c.listenerActive, c.listenerAccepted, c.listenerRefusals,
		c.configProblems, c.datapathInfo, c.kernelSpliced,
		c.bpfMappingBytes, c.bpfMappingPassed, c.listenerSteered,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()

	ch <- prometheus.MustNewConstMetric(c.datapathInfo, prometheus.GaugeValue, 1, st.Datapath, st.DatapathReason)
	if st.Kernel != nil {
		ch <- prometheus.MustNewConstMetric(c.kernelSpliced, prometheus.GaugeValue, float64(st.Kernel.Pairs))
	}

	// Both levels always exist, so "problems > 0" alerts have a series to
	// watch from the first scrape.
	problems := map[string]int{"error": 0, "warning": 0}
	for _, p := range st.Problems {
		problems[p.Level]++
	}
	for level, n := range problems {
		ch <- prometheus.MustNewConstMetric(c.configProblems, prometheus.GaugeValue, float64(n), level)
	}

	for _, l := range st.Listeners {
		ch <- prometheus.MustNewConstMetric(c.listenerActive, prometheus.GaugeValue, float64(l.Active), l.Key)
		ch <- prometheus.MustNewConstMetric(c.listenerAccepted, prometheus.CounterValue, float64(l.Accepted), l.Key)
		if l.BPF != nil && l.BPF.Steered {
			ch <- prometheus.MustNewConstMetric(c.listenerSteered, prometheus.CounterValue, float64(l.BPF.SteeredConnections), l.Key)
		}
		for reason, n := range l.Refusals {
			ch <- prometheus.MustNewConstMetric(c.listenerRefusals, prometheus.CounterValue, float64(n), l.Key, reason)
		}
		for _, m := range l.Mappings {
			c.collectMapping(ch, l.Key, m)
		}
	}
}

func (c *statusCollector) collectMapping(ch chan<- prometheus.Metric, listener string, m api.Mapping) {
	counter := func(d *prometheus.Desc, v uint64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{listener, m.Name}, extra...)...)
	}
	ch <- prometheus.MustNewConstMetric(c.mappingActive, prometheus.GaugeValue, float64(m.Active), listener, m.Name)

	// Total counts every connection; Spliced is the subset handed to the
	// kernel. Guard against a momentarily inconsistent read of the two.
	relayed := uint64(0)
	if m.Total > m.Spliced {
		relayed = m.Total - m.Spliced
	}
	counter(c.mappingConns, m.Spliced, datapathKernel)
	counter(c.mappingConns, relayed, datapathUserspace)

	counter(c.mappingBytes, m.KernelBytesToUpstream, "to_upstream", datapathKernel)
	counter(c.mappingBytes, m.KernelBytesToClient, "to_client", datapathKernel)
	counter(c.mappingBytes, m.BytesToUpstream, "to_upstream", datapathUserspace)
	counter(c.mappingBytes, m.BytesToClient, "to_client", datapathUserspace)

	for reason, n := range m.Refusals {
		counter(c.mappingRefusals, n, reason)
	}
	counter(c.mappingIdleClosed, m.IdleClosed)
	if m.BPF != nil {
		counter(c.bpfMappingBytes, m.BPF.Bytes)
		counter(c.bpfMappingPassed, m.BPF.PassedBytes)
	}
}
