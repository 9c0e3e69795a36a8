package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Annotations in the tcpmap.io/ prefix add what Emissary cannot express. A
// misspelt one is an error rather than silently doing nothing.
const (
	// AnnotationConnectTimeoutMs bounds the upstream dial of a TCPMapping, in
	// milliseconds (Emissary's is fixed at 3 s, issue 5695).
	AnnotationConnectTimeoutMs = "tcpmap.io/connect-timeout-ms"
	// AnnotationSendProxyProtocol makes a TCPMapping send a PROXY protocol
	// header, "v1" or "v2", to its upstream.
	AnnotationSendProxyProtocol = "tcpmap.io/send-proxy-protocol"

	annotationPrefix = "tcpmap.io/"
)

// tcpmapAnnotations lists, for each tcpmap.io annotation, the kinds it is
// allowed on and a check of its value.
var tcpmapAnnotations = map[string]struct {
	kinds []string
	check func(string) error
}{
	AnnotationConnectTimeoutMs: {[]string{KindTCPMapping}, func(v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n > maxMillis {
			return fmt.Errorf("must be a positive whole number of milliseconds such as \"5000\", got %q", v)
		}
		return nil
	}},
	AnnotationSendProxyProtocol: {[]string{KindTCPMapping}, func(v string) error {
		if v != "v1" && v != "v2" {
			return fmt.Errorf("must be \"v1\" or \"v2\", got %q", v)
		}
		return nil
	}},
}

func validateAnnotations(d *docCtx, ann map[string]any) {
	keys := make([]string, 0, len(ann))
	for k := range ann {
		if strings.HasPrefix(k, annotationPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		field := childPath("metadata.annotations", k)
		a, known := tcpmapAnnotations[k]
		if !known {
			d.errorf(field, "unknown tcpmap annotation (known: %s, %s)", AnnotationConnectTimeoutMs, AnnotationSendProxyProtocol)
			continue
		}
		if !contains(a.kinds, d.ref.Kind) {
			d.errorf(field, "applies only to %s", strings.Join(a.kinds, ", "))
			continue
		}
		if v, ok := ann[k].(string); ok { // other types are reported by the decoder
			if err := a.check(v); err != nil {
				d.errorf(field, "%v", err)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ConnectTimeout is the tcpmap.io/connect-timeout-ms annotation; false when
// absent. Loaded resources have a valid value.
func (r *Resource) ConnectTimeout() (time.Duration, bool) {
	v, ok := r.Meta.Annotations[AnnotationConnectTimeoutMs]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 || n > maxMillis {
		return 0, false
	}
	return time.Duration(n) * time.Millisecond, true
}

// SendProxyProtocol is the PROXY protocol version the
// tcpmap.io/send-proxy-protocol annotation asks for: 1, 2, or 0 for none.
func (r *Resource) SendProxyProtocol() int {
	switch r.Meta.Annotations[AnnotationSendProxyProtocol] {
	case "v1":
		return 1
	case "v2":
		return 2
	}
	return 0
}
