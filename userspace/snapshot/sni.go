package snapshot

import "strings"

// RouteForSNI returns the route whose host pattern matches the client's SNI
// server name, or nil when none does (the handshake must then fail).
//
// Matching is case-insensitive. An exact host wins over a wildcard; among
// wildcards the longest suffix wins ("*.a.example.com" before
// "*.example.com"); "*" matches any name, including an empty one.
func (l *Listener) RouteForSNI(serverName string) *Route {
	name := strings.ToLower(strings.TrimSuffix(serverName, "."))
	var best *Route
	bestScore := -1
	for i := range l.Routes {
		r := &l.Routes[i]
		if s := HostMatchScore(r.Host, name); s > bestScore {
			best, bestScore = r, s
		}
	}
	return best
}

// HostMatchScore reports how specifically pattern matches name: -1 for no
// match, larger for more specific. Patterns are Emissary host globs: an
// exact name, a leading "*." or "*" wildcard label, or "*" alone.
func HostMatchScore(pattern, name string) int {
	p := strings.ToLower(strings.TrimSuffix(pattern, "."))
	n := strings.ToLower(name)
	switch {
	case p == "*":
		return 0
	case !strings.Contains(p, "*"):
		if p == n {
			return 1 << 20 // exact beats any wildcard
		}
		return -1
	case strings.HasPrefix(p, "*"):
		suffix := p[1:] // ".example.com" or "example.com" for "*example.com"
		if len(n) > len(suffix) && strings.HasSuffix(n, suffix) {
			return len(suffix)
		}
		return -1
	case strings.HasSuffix(p, "*"):
		prefix := p[:len(p)-1]
		if len(n) > len(prefix) && strings.HasPrefix(n, prefix) {
			return len(prefix)
		}
		return -1
	}
	return -1
}

// GlobMatches reports whether a Host resource's hostname glob matches a
// TCPMapping host. Both may contain wildcards; a glob matches a more
// specific glob it covers ("*.example.com" covers "*.a.example.com").
func GlobMatches(hostGlob, mappingHost string) bool {
	if HostMatchScore(hostGlob, mappingHost) >= 0 {
		return true
	}
	// Treat the mapping's own wildcard label as an arbitrary label.
	if strings.HasPrefix(mappingHost, "*.") {
		return HostMatchScore(hostGlob, "x"+mappingHost[1:]) >= 0
	}
	return false
}
