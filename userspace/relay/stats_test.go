package relay

import (
	"reflect"
	"testing"
)

// TestReasonLabels pins the reason labels that metrics will export.
func TestReasonLabels(t *testing.T) {
	r := Refusals{MaxConnections: 1, MaxPendingRequests: 2, DialFailed: 3, UpstreamTLSFailed: 4}
	want := map[string]uint64{"max_connections": 1, "max_pending_requests": 2, "dial_failed": 3, "upstream_tls_failed": 4}
	if got := r.ByReason(); !reflect.DeepEqual(got, want) {
		t.Errorf("Refusals.ByReason() = %v, want %v", got, want)
	}
	l := ListenerStats{ProxyMissing: 1, ProxyInvalid: 2, ProxyTimeout: 3, HandshakeTimeout: 4, HandshakeClientClosed: 5,
		HandshakeNotTLS: 6, UnknownSNI: 7, HandshakeRejected: 8, NoBackend: 9}
	wantL := map[string]uint64{"proxy_missing": 1, "proxy_invalid": 2, "proxy_timeout": 3, "handshake_timeout": 4,
		"handshake_client_closed": 5, "handshake_not_tls": 6, "unknown_sni": 7, "handshake_rejected": 8, "no_backend": 9}
	if got := l.ByReason(); !reflect.DeepEqual(got, wantL) {
		t.Errorf("ListenerStats.ByReason() = %v, want %v", got, wantL)
	}
}
