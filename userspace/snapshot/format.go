package snapshot

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// tableHeader names the columns of WriteTable.
var tableHeader = []string{
	"LISTENER", "PROTO", "SNI", "MAPPING", "WEIGHT", "UPSTREAM",
	"TLS-ORIGIN", "SPLICE", "IDLE", "CONNECT-TIMEOUT", "MAX-CONN",
}

// WriteTable prints the resolved listener table, one row per backend, in
// snapshot order, as `tcpmapd check` shows it. The output depends only on
// s, so it can be compared with a golden file.
//
// PROTO gains "+PROXY" when clients must send a PROXY header; SNI is "-" on
// TCP listeners; WEIGHT is "w/total" when the route's weights do not total
// 100; UPSTREAM gains "+proxy-v1"/"+proxy-v2" when tcpmap sends a PROXY
// header; TLS-ORIGIN is "-" for cleartext, else the SNI sent, the
// TLSContext, whether a client certificate is offered and whether the
// upstream certificate is verified.
func WriteTable(w io.Writer, s Snapshot) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(tableHeader, "\t"))
	for li := range s.Listeners {
		l := &s.Listeners[li]
		proto := string(l.Protocol)
		if l.ProxyProtocol {
			proto += "+PROXY"
		}
		for ri := range l.Routes {
			r := &l.Routes[ri]
			sni := r.Host
			if sni == "" {
				sni = "-"
			}
			total := r.TotalWeight()
			for bi := range r.Backends {
				b := &r.Backends[bi]
				weight := fmt.Sprint(b.Weight)
				if total != 100 {
					weight = fmt.Sprintf("%d/%d", b.Weight, total)
				}
				upstream := b.Upstream.Address()
				if b.SendProxyProtocol != 0 {
					upstream += fmt.Sprintf("+proxy-v%d", b.SendProxyProtocol)
				}
				fmt.Fprintln(tw, strings.Join([]string{
					l.Key(), proto, sni,
					b.Mapping.NamespacedName(),
					weight, upstream, originSummary(b.Origination),
					yesNo(l.SpliceEligible(b)),
					durationOrDash(r.IdleTimeout), r.ConnectTimeout.String(),
					fmt.Sprint(r.CircuitBreaker.MaxConnections),
				}, "\t"))
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write listener table: %w", err)
	}
	return nil
}

// originSummary describes TLS origination in one cell without spaces.
func originSummary(c *TLSClient) string {
	if c == nil {
		return "-"
	}
	parts := []string{"sni=" + orDash(c.ServerName)}
	if c.Context != nil {
		parts = append(parts, "ctx="+c.Context.NamespacedName())
	}
	if len(c.CertPEM) > 0 {
		parts = append(parts, "client-cert")
	}
	if len(c.RootCAPEM) > 0 {
		parts = append(parts, "verify")
	} else {
		parts = append(parts, "no-verify")
	}
	return strings.Join(parts, ",")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func durationOrDash(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.String()
}
