package config

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Per-resource checks. They look at one resource only; rules between
// resources (a TCPMapping's TLSContext exists, ports agree with Listeners,
// canary weights add up) belong to the resolve package.

// maxMillis is the largest millisecond count a time.Duration holds.
const maxMillis = math.MaxInt64 / int64(time.Millisecond)

func validateTCPMapping(d *docCtx, s *TCPMappingSpec) {
	checkPort(d, "spec.port", s.Port)
	switch svc := s.Service; {
	case strings.TrimSpace(svc) == "":
		d.errorf("spec.service", "required: the upstream as [scheme://]host[:port]")
	case strings.ContainsAny(svc, " \t\r\n"):
		d.errorf("spec.service", "must not contain white space, got %q", svc)
	}
	if s.Weight != nil && (*s.Weight < 0 || *s.Weight > 100) {
		d.errorf("spec.weight", "must be a percentage between 0 and 100, got %d", *s.Weight)
	}
	checkMillis(d, "spec.idle_timeout_ms", s.IdleTimeoutMs)
	if s.Address != "" {
		if _, err := netip.ParseAddr(s.Address); err != nil {
			d.errorf("spec.address", "must be an IP address (v4 or v6) to listen on, got %q", s.Address)
		}
	}
	if s.Host != "" {
		if err := checkHostGlob(s.Host); err != nil {
			d.errorf("spec.host", "%v", err)
		}
	}
	if s.TLS != nil && strings.ContainsAny(s.TLS.Context, " \t\r\n") {
		d.errorf("spec.tls", "must be the name of a TLSContext, got %q", s.TLS.Context)
	}
	checkBreakers(d, "spec.circuit_breakers", s.CircuitBreakers)
}

func validateTLSContext(d *docCtx, s *TLSContextSpec) {
	for i, h := range s.Hosts {
		if strings.TrimSpace(h) == "" {
			d.errorf(indexPath("spec.hosts", i), "must not be empty")
		}
	}
	if s.Secret != "" && s.CertChainFile != "" {
		d.errorf("spec.cert_chain_file", "cannot be used together with secret; give the certificate one way")
	}
	// Neither secret nor cert_chain_file is allowed: such a context can still
	// originate TLS with only sni, min_tls_version or ca_secret (Emissary
	// refuses it, issue 4476).
	checkTLSSettings(d, "spec", tlsSettings{
		certChainFile: s.CertChainFile, privateKeyFile: s.PrivateKeyFile,
		alpn: s.ALPNProtocols, minVersion: s.MinTLSVersion, maxVersion: s.MaxTLSVersion,
		redirectCleartextFrom: s.RedirectCleartextFrom, sni: s.SNI,
	})
}

func validateHost(d *docCtx, s *HostSpec) {
	if s.Hostname == "" {
		s.Hostname = "*"
	}
	if strings.ContainsAny(s.Hostname, " \t\r\n") {
		d.errorf("spec.hostname", "must not contain white space, got %q", s.Hostname)
	}
	if s.TLSContext != nil && s.TLS != nil {
		d.errorf("spec.tls", "cannot be used together with tlsContext; put the settings in the TLSContext or here, not both")
	}
	if s.TLSSecret != nil && strings.TrimSpace(s.TLSSecret.Name) == "" {
		d.errorf("spec.tlsSecret.name", "required when tlsSecret is given")
	}
	if s.TLSContext != nil && strings.TrimSpace(s.TLSContext.Name) == "" {
		d.errorf("spec.tlsContext.name", "required when tlsContext is given")
	}
	if t := s.TLS; t != nil {
		checkTLSSettings(d, "spec.tls", tlsSettings{
			certChainFile: t.CertChainFile, privateKeyFile: t.PrivateKeyFile,
			alpn: t.ALPNProtocols, minVersion: t.MinTLSVersion, maxVersion: t.MaxTLSVersion,
			redirectCleartextFrom: t.RedirectCleartextFrom, sni: t.SNI,
		})
	}
}

// Listener protocols and what each means as a protocol stack, outermost
// layer first, as Emissary defines them.
var protocolStacks = map[string][]string{
	"HTTP":       {"HTTP", "TCP"},
	"HTTPS":      {"TLS", "HTTP", "TCP"},
	"HTTPPROXY":  {"PROXY", "HTTP", "TCP"},
	"HTTPSPROXY": {"PROXY", "TLS", "HTTP", "TCP"},
	"TCP":        {"TCP"},
	"TLS":        {"TLS", "TCP"},
}

var (
	stackElements  = []string{"HTTP", "PROXY", "TLS", "TCP", "UDP"}
	securityModels = []string{"XFP", "SECURE", "INSECURE"}
)

// Stack is the Listener's protocol stack, outermost layer first:
// protocolStack when given (it overrides protocol, as in Emissary), else
// the stack that protocol stands for (TLS → [TLS TCP]). Nil when neither is
// set or protocol is unknown.
func (s *ListenerSpec) Stack() []string {
	if len(s.ProtocolStack) > 0 {
		return slices.Clone(s.ProtocolStack)
	}
	return slices.Clone(protocolStacks[s.Protocol])
}

func validateListener(d *docCtx, s *ListenerSpec) {
	checkPort(d, "spec.port", s.Port)
	if s.Protocol != "" {
		if _, ok := protocolStacks[s.Protocol]; !ok {
			d.errorf("spec.protocol", "must be one of HTTP, HTTPS, HTTPPROXY, HTTPSPROXY, TCP, TLS, got %q", s.Protocol)
		}
	}
	for i, e := range s.ProtocolStack {
		if !slices.Contains(stackElements, e) {
			d.errorf(indexPath("spec.protocolStack", i), "must be one of %s, got %q", strings.Join(stackElements, ", "), e)
		}
	}
	switch {
	case s.Protocol == "" && len(s.ProtocolStack) == 0:
		d.errorf("spec.protocol", "required: give protocol (e.g. TCP or TLS) or protocolStack")
	case s.Protocol != "" && len(s.ProtocolStack) > 0:
		if want, ok := protocolStacks[s.Protocol]; ok && !slices.Equal(want, s.ProtocolStack) {
			d.errorf("spec.protocolStack", "[%s] disagrees with protocol %s, which means [%s]; give one of them",
				strings.Join(s.ProtocolStack, " "), s.Protocol, strings.Join(want, " "))
		}
	}
	if s.SecurityModel != "" && !slices.Contains(securityModels, s.SecurityModel) {
		d.errorf("spec.securityModel", "must be one of XFP, SECURE, INSECURE, got %q", s.SecurityModel)
	}
	if s.L7Depth != nil && *s.L7Depth < 0 {
		d.errorf("spec.l7Depth", "must not be negative, got %d", *s.L7Depth)
	}
}

func validateModule(d *docCtx, s *ModuleSpec) {
	checkBreakers(d, "spec.config.circuit_breakers", s.Config.CircuitBreakers)
}

// tlsSettings are the fields TLSContext and Host.tls share.
type tlsSettings struct {
	certChainFile, privateKeyFile string
	alpn                          string
	minVersion, maxVersion        string
	redirectCleartextFrom         *int
	sni                           string
}

// tlsVersions orders the TLS versions Emissary accepts.
var tlsVersions = map[string]int{"v1.0": 0, "v1.1": 1, "v1.2": 2, "v1.3": 3}

func checkTLSSettings(d *docCtx, at string, s tlsSettings) {
	switch {
	case s.certChainFile != "" && s.privateKeyFile == "":
		d.errorf(at+".private_key_file", "required when cert_chain_file is set")
	case s.certChainFile == "" && s.privateKeyFile != "":
		d.errorf(at+".cert_chain_file", "required when private_key_file is set")
	}
	lo, okMin := tlsVersions[s.minVersion]
	hi, okMax := tlsVersions[s.maxVersion]
	if s.minVersion != "" && !okMin {
		d.errorf(at+".min_tls_version", "must be one of v1.0, v1.1, v1.2, v1.3, got %q", s.minVersion)
	}
	if s.maxVersion != "" && !okMax {
		d.errorf(at+".max_tls_version", "must be one of v1.0, v1.1, v1.2, v1.3, got %q", s.maxVersion)
	}
	if s.minVersion != "" && s.maxVersion != "" && okMin && okMax && lo > hi {
		d.errorf(at+".min_tls_version", "%s is above max_tls_version %s", s.minVersion, s.maxVersion)
	}
	if s.alpn != "" {
		for _, p := range strings.Split(s.alpn, ",") {
			p = strings.TrimSpace(p)
			if p == "" || len(p) > 255 {
				d.errorf(at+".alpn_protocols", "must be a comma-separated list of protocol names such as \"h2,http/1.1\", got %q", s.alpn)
				break
			}
		}
	}
	if r := s.redirectCleartextFrom; r != nil && (*r < 1 || *r > 65535) {
		d.errorf(at+".redirect_cleartext_from", "must be a port between 1 and 65535, got %d", *r)
	}
	if s.sni != "" {
		if _, err := netip.ParseAddr(s.sni); err != nil {
			if err := checkHostname(s.sni); err != nil {
				d.errorf(at+".sni", "%v", err)
			}
		}
	}
}

func checkPort(d *docCtx, field string, p IntOrString) {
	switch {
	case !p.Set:
		d.errorf(field, "required: a TCP port between 1 and 65535")
	case p.Value < 1 || p.Value > 65535:
		d.errorf(field, "must be a TCP port between 1 and 65535, got %d", p.Value)
	}
}

func checkMillis(d *docCtx, field string, v IntOrString) {
	switch {
	case !v.Set:
	case v.Value < 0:
		d.errorf(field, "must not be negative, got %d", v.Value)
	case v.Value > maxMillis:
		d.errorf(field, "%d milliseconds is too long", v.Value)
	}
}

func checkBreakers(d *docCtx, field string, cbs []CircuitBreaker) {
	for i, cb := range cbs {
		at := indexPath(field, i)
		switch cb.Priority {
		case "", "default", "high":
		default:
			d.errorf(at+".priority", "must be default or high, got %q", cb.Priority)
		}
		for _, lim := range []struct {
			name string
			v    *int
		}{
			{"max_connections", cb.MaxConnections},
			{"max_pending_requests", cb.MaxPendingRequests},
			{"max_requests", cb.MaxRequests},
			{"max_retries", cb.MaxRetries},
		} {
			if lim.v != nil && *lim.v < 0 {
				d.errorf(at+"."+lim.name, "must not be negative, got %d", *lim.v)
			}
		}
	}
}

// checkHostGlob accepts a hostname, "*", or "*." followed by a hostname:
// the SNI patterns a TCPMapping host can match.
func checkHostGlob(h string) error {
	if h == "*" {
		return nil
	}
	rest := strings.TrimPrefix(h, "*.")
	if strings.Contains(rest, "*") {
		return fmt.Errorf("%q is not a valid host: a glob may only have \"*\" as its whole first label, as in *.example.com", h)
	}
	if err := checkHostname(rest); err != nil {
		return fmt.Errorf("%q is not a valid host: %w", h, err)
	}
	return nil
}

// checkHostname accepts DNS names: dot-separated labels of letters, digits,
// '-' and '_' (found in real internal names), at most 63 bytes each and 253
// in all, no label starting or ending with '-'.
func checkHostname(h string) error {
	if h == "" {
		return fmt.Errorf("empty hostname")
	}
	if len(h) > 253 {
		return fmt.Errorf("hostname longer than 253 characters")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return fmt.Errorf("hostname %q has an empty label", h)
		}
		if len(label) > 63 {
			return fmt.Errorf("hostname label %q is longer than 63 characters", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("hostname label %q starts or ends with '-'", label)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("hostname %q has the character %q", h, c)
			}
		}
	}
	return nil
}

// validateMeta checks metadata from the generic document, so that it is
// checked even when the spec does not decode.
func validateMeta(d *docCtx, meta map[string]any) {
	switch name, present := meta["name"]; {
	case !present:
		d.errorf("metadata.name", "required")
	default:
		if s, ok := name.(string); ok {
			if err := checkDNSSubdomain(s); err != nil {
				d.errorf("metadata.name", "%v", err)
			}
		}
	}
	if ns, ok := meta["namespace"].(string); ok && ns != "" {
		if err := checkDNSLabel(ns); err != nil {
			d.errorf("metadata.namespace", "%v", err)
		}
	}
	if ann, ok := meta["annotations"].(map[string]any); ok {
		validateAnnotations(d, ann)
	}
}

// checkDNSSubdomain is Kubernetes' rule for object names (RFC 1123
// subdomain): lower-case letters, digits, '-' and '.', at most 253.
func checkDNSSubdomain(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if len(s) > 253 {
		return fmt.Errorf("must be at most 253 characters")
	}
	for _, part := range strings.Split(s, ".") {
		if err := checkDNSLabel(part); err != nil {
			return fmt.Errorf("%q is not a valid name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", s)
		}
	}
	return nil
}

// checkDNSLabel is Kubernetes' rule for namespaces (RFC 1123 label).
func checkDNSLabel(s string) error {
	ok := s != "" && len(s) <= 63 && s[0] != '-' && s[len(s)-1] != '-'
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("%q is not a valid namespace: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit", s)
	}
	return nil
}
