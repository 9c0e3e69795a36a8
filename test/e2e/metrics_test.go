package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestMetricsEndpoint: tcpmapd serves Prometheus metrics and probes on
// --metrics-addr; a relayed connection shows up in the mapping's series.
func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	tp.serveEcho(t, "upstream", 22, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"docs/ssh.yaml"}, nil)}, "--metrics-addr", proxyA+":9102")...)
	ctx := testContext(t, time.Minute)
	if _, err := tp.reach(ctx, proxyAddr(2222)); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return tp.client.dial(ctx, addr) },
	}}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get(fmt.Sprintf("http://%s:9102%s", proxyA, path))
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d after ready", code)
	}
	var body string
	waitUntil(t, ctx, "the connection in tcpmap_mapping_connections_total", func() bool {
		_, body = get("/metrics")
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "tcpmap_mapping_connections_total{") && strings.Contains(line, `mapping="default/ssh"`) &&
				!strings.HasSuffix(line, " 0") {
				return true
			}
		}
		return false
	})
	for _, want := range []string{"tcpmap_upstream_connect_duration_seconds_bucket", "tcpmap_datapath_info", "tcpmap_listener_accepted_connections_total"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
