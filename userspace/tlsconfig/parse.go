// Package tlsconfig turns the TLS settings of Emissary resources (TLSContext
// and Host `tls` fields, as carried in a snapshot) into crypto/tls values.
//
// Emissary hands these strings to Envoy, which uses BoringSSL names; tcpmap
// runs on Go's crypto/tls, so every name is translated here, and a name Go
// cannot honour is an error rather than being silently dropped.
package tlsconfig

import (
	"crypto/tls"
	"fmt"
	"strings"
)

// ParseVersion parses an Emissary TLS version, "v1.0" to "v1.3" (the "v" is
// optional, case does not matter). The empty string returns 0, which leaves
// crypto/tls at its default.
func ParseVersion(s string) (uint16, error) {
	v := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "v")
	switch v {
	case "":
		return 0, nil
	case "1.0":
		return tls.VersionTLS10, nil
	case "1.1":
		return tls.VersionTLS11, nil
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("unknown TLS version %q (want v1.0, v1.1, v1.2 or v1.3)", s)
}

// VersionName is the Emissary spelling of a TLS version, "v1.2"; "" for 0.
func VersionName(v uint16) string {
	switch v {
	case 0:
		return ""
	case tls.VersionTLS10:
		return "v1.0"
	case tls.VersionTLS11:
		return "v1.1"
	case tls.VersionTLS12:
		return "v1.2"
	case tls.VersionTLS13:
		return "v1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

// opensslSuites maps the OpenSSL/BoringSSL names that Envoy accepts, and
// that the Emissary docs use, to Go's suite IDs. RC4 suites are left out on
// purpose: BoringSSL (and so Emissary) rejects them too, and they are broken.
var opensslSuites = map[string]uint16{
	"ECDHE-ECDSA-AES128-GCM-SHA256": tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	"ECDHE-RSA-AES128-GCM-SHA256":   tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	"ECDHE-ECDSA-AES256-GCM-SHA384": tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	"ECDHE-RSA-AES256-GCM-SHA384":   tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	"ECDHE-ECDSA-CHACHA20-POLY1305": tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	"ECDHE-RSA-CHACHA20-POLY1305":   tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	"ECDHE-ECDSA-AES128-SHA":        tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
	"ECDHE-ECDSA-AES256-SHA":        tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	"ECDHE-RSA-AES128-SHA":          tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	"ECDHE-RSA-AES256-SHA":          tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
	"ECDHE-ECDSA-AES128-SHA256":     tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
	"ECDHE-RSA-AES128-SHA256":       tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
	"ECDHE-RSA-DES-CBC3-SHA":        tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA,
	"AES128-GCM-SHA256":             tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	"AES256-GCM-SHA384":             tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
	"AES128-SHA":                    tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	"AES256-SHA":                    tls.TLS_RSA_WITH_AES_256_CBC_SHA,
	"AES128-SHA256":                 tls.TLS_RSA_WITH_AES_128_CBC_SHA256,
	"DES-CBC3-SHA":                  tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
}

// tls13Suites are the TLS 1.3 suite names (the same in OpenSSL and IANA
// spelling). crypto/tls does not let a program choose TLS 1.3 suites: all
// three are always enabled and ordered by hardware support. They are
// accepted, so that configurations written for Envoy load, and ignored.
var tls13Suites = map[string]bool{
	"TLS_AES_128_GCM_SHA256":       true,
	"TLS_AES_256_GCM_SHA384":       true,
	"TLS_CHACHA20_POLY1305_SHA256": true,
}

// ianaSuites maps Go's (IANA) names of TLS 1.0-1.2 suites to IDs, built from
// crypto/tls itself so it follows the Go release. RC4 is left out as above.
var ianaSuites = func() map[string]uint16 {
	m := map[string]uint16{}
	add := func(cs []*tls.CipherSuite) {
		for _, c := range cs {
			if strings.Contains(c.Name, "RC4") || tls13Suites[c.Name] {
				continue
			}
			m[c.Name] = c.ID
		}
	}
	add(tls.CipherSuites())
	add(tls.InsecureCipherSuites())
	return m
}()

// ParseCipherSuites translates TLSContext cipher_suites into crypto/tls IDs,
// in the order given, without duplicates.
//
// Each entry is an OpenSSL/BoringSSL name ("ECDHE-RSA-AES128-GCM-SHA256"),
// a BoringSSL equal-preference group ("[A|B]", which yields A and B), or a
// Go/IANA name ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"). TLS 1.3 names are
// accepted and ignored (crypto/tls does not make them configurable). Since
// Go 1.17 crypto/tls picks its own preference order, so the order given
// only decides which suites are enabled. An unknown name, or one Go does
// not implement, is an error naming it. Insecure suites Go still
// implements (RSA key exchange, 3DES, CBC-SHA256) are accepted because
// Envoy accepts them; see InsecureSuites to warn about them.
func ParseCipherSuites(names []string) ([]uint16, error) {
	var out []uint16
	seen := map[uint16]bool{}
	for _, entry := range names {
		entry = strings.TrimSpace(entry)
		members := []string{entry}
		if strings.HasPrefix(entry, "[") || strings.HasSuffix(entry, "]") {
			if !strings.HasPrefix(entry, "[") || !strings.HasSuffix(entry, "]") {
				return nil, fmt.Errorf("malformed equal-preference group %q (want [A|B])", entry)
			}
			members = strings.Split(entry[1:len(entry)-1], "|")
		}
		for _, name := range members {
			name = strings.TrimSpace(name)
			id, ok, err := lookupSuite(name)
			if err != nil {
				return nil, err
			}
			if ok && !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	return out, nil
}

// lookupSuite resolves one name; ok is false for an ignored TLS 1.3 name.
func lookupSuite(name string) (id uint16, ok bool, err error) {
	up := strings.ToUpper(name)
	switch {
	case up == "":
		return 0, false, fmt.Errorf("empty cipher suite name")
	case tls13Suites[up]:
		return 0, false, nil
	case strings.Contains(up, "RC4"):
		return 0, false, fmt.Errorf("cipher suite %q uses RC4, which is broken and not supported", name)
	}
	if id, ok := opensslSuites[up]; ok {
		return id, true, nil
	}
	if id, ok := ianaSuites[up]; ok {
		return id, true, nil
	}
	return 0, false, fmt.Errorf("unknown or unsupported cipher suite %q", name)
}

// InsecureSuites returns the names of the suites in ids that crypto/tls
// classes as insecure, so that callers can warn about a configuration that
// enables them.
func InsecureSuites(ids []uint16) []string {
	insecure := map[uint16]string{}
	for _, c := range tls.InsecureCipherSuites() {
		insecure[c.ID] = c.Name
	}
	var out []string
	for _, id := range ids {
		if n, ok := insecure[id]; ok {
			out = append(out, n)
		}
	}
	return out
}

// curves maps the names Envoy's ecdh_curves takes (and the OpenSSL and Go
// aliases) to crypto/tls curve IDs. Keys are lower case.
var curves = map[string]tls.CurveID{
	"x25519":         tls.X25519,
	"p-256":          tls.CurveP256,
	"prime256v1":     tls.CurveP256,
	"secp256r1":      tls.CurveP256,
	"curvep256":      tls.CurveP256,
	"p-384":          tls.CurveP384,
	"secp384r1":      tls.CurveP384,
	"curvep384":      tls.CurveP384,
	"p-521":          tls.CurveP521,
	"secp521r1":      tls.CurveP521,
	"curvep521":      tls.CurveP521,
	"x25519mlkem768": tls.X25519MLKEM768,
}

// ParseCurves translates TLSContext ecdh_curves into crypto/tls curve IDs,
// in the order given, without duplicates: X25519, P-256 (prime256v1,
// secp256r1), P-384 (secp384r1), P-521 (secp521r1) and X25519MLKEM768.
// Names are case-insensitive; an unknown name is an error naming it.
func ParseCurves(names []string) ([]tls.CurveID, error) {
	var out []tls.CurveID
	seen := map[tls.CurveID]bool{}
	for _, n := range names {
		id, ok := curves[strings.ToLower(strings.TrimSpace(n))]
		if !ok {
			return nil, fmt.Errorf("unknown ECDH curve %q (want X25519, P-256, P-384, P-521 or X25519MLKEM768)", n)
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out, nil
}

// ParseALPN splits TLSContext alpn_protocols, one comma-separated string,
// into protocol names; blanks around names and empty names are dropped.
func ParseALPN(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
