package resolve

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// service is a parsed TCPMapping service, `[scheme://]host[:port]`.
type service struct {
	https bool   // scheme https://
	host  string // without brackets
	port  int    // 0 when not written
}

// parseService parses a TCPMapping service. The scheme only says whether
// to originate TLS ("https"; "http" or none means cleartext unless `tls`
// is set); anything else a URL may carry (user, path, query) is an error,
// as in Emissary, because a TCP proxy cannot honour it.
func parseService(s string) (service, error) {
	var out service
	rest := strings.TrimSpace(s)
	if rest == "" {
		return out, fmt.Errorf("service is required")
	}
	if scheme, after, ok := strings.Cut(rest, "://"); ok {
		switch strings.ToLower(scheme) {
		case "https":
			out.https = true
		case "http":
		default:
			return out, fmt.Errorf("unknown scheme %q in service %q (want http or https)", scheme, s)
		}
		rest = after
	}
	// A lone trailing slash is what people type after a URL; it carries no
	// meaning, so it is allowed.
	rest = strings.TrimSuffix(rest, "/")
	if i := strings.IndexAny(rest, "/?#@"); i >= 0 {
		return out, fmt.Errorf("service %q has URL parts a TCP service cannot use (%q); want [scheme://]host[:port]", s, rest[i:])
	}
	hostPart, portPart := rest, ""
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]")
		if end < 0 {
			return out, fmt.Errorf("service %q has an unterminated IPv6 literal", s)
		}
		hostPart = rest[1:end]
		tail := rest[end+1:]
		if tail != "" {
			if !strings.HasPrefix(tail, ":") {
				return out, fmt.Errorf("service %q has junk after the IPv6 literal", s)
			}
			portPart = tail[1:]
			if portPart == "" {
				return out, fmt.Errorf("service %q has an empty port", s)
			}
		}
		a, err := netip.ParseAddr(hostPart)
		if err != nil || !a.Is6() {
			return out, fmt.Errorf("service %q: %q in brackets is not an IPv6 address", s, hostPart)
		}
	} else {
		switch strings.Count(rest, ":") {
		case 0:
		case 1:
			hostPart, portPart, _ = strings.Cut(rest, ":")
			if portPart == "" {
				return out, fmt.Errorf("service %q has an empty port", s)
			}
		default:
			return out, fmt.Errorf("service %q: an IPv6 address must be written in brackets, as [%s]:port", s, rest)
		}
	}
	if hostPart == "" {
		return out, fmt.Errorf("service %q has no host", s)
	}
	if !strings.HasPrefix(rest, "[") {
		if err := checkHostname(hostPart); err != nil {
			return out, fmt.Errorf("service %q: %w", s, err)
		}
	}
	if portPart != "" {
		p, err := strconv.Atoi(portPart)
		if err != nil || p < 1 || p > 65535 {
			return out, fmt.Errorf("service %q has an invalid port %q (want 1..65535)", s, portPart)
		}
		out.port = p
	}
	out.host = hostPart
	return out, nil
}

// checkHostname accepts DNS names (letters, digits, '-', '_', '.') and
// IPv4 literals.
func checkHostname(h string) error {
	for _, c := range h {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("host %q contains %q, which a DNS name cannot", h, c)
		}
	}
	if strings.HasPrefix(h, ".") || strings.Contains(h, "..") {
		return fmt.Errorf("host %q has an empty label", h)
	}
	return nil
}

// isIPLiteral reports whether host is an IP address rather than a name.
func isIPLiteral(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

// expandHost applies Kubernetes service naming when a cluster domain is
// configured: "name" is a service in Ambassador's namespace and
// "name.namespace" a service in another namespace, as the TCPMapping docs
// say; both become "...svc.<domain>". IP literals, "localhost", names with
// two or more dots and names ending in a dot are already complete and are
// used as written.
func expandHost(host, clusterDomain, ambassadorNS string) string {
	if clusterDomain == "" || isIPLiteral(host) || strings.EqualFold(host, "localhost") || strings.HasSuffix(host, ".") {
		return host
	}
	domain := strings.Trim(clusterDomain, ".")
	switch strings.Count(host, ".") {
	case 0:
		return host + "." + ambassadorNS + ".svc." + domain
	case 1:
		return host + ".svc." + domain
	}
	return host
}
