package config

import (
	"strconv"
	"strings"
)

// Field paths name a field the way a user reads it in YAML: "spec.port",
// "spec.circuit_breakers[0].priority". A map key that is not a plain word
// is quoted in brackets, metadata.annotations["tcpmap.io/connect-timeout-ms"]
// and data["tls.crt"], so that the dots inside it cannot be mistaken for
// nesting.

// childPath is the path of key inside the object at parent.
func childPath(parent, key string) string {
	if !plainKey(key) {
		return parent + "[" + strconv.Quote(key) + "]"
	}
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// indexPath is the path of item i of the list at parent.
func indexPath(parent string, i int) string {
	return parent + "[" + strconv.Itoa(i) + "]"
}

func plainKey(key string) bool {
	if key == "" {
		return false
	}
	for _, c := range key {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// parentPath strips the last element of a path: "spec.port" → "spec",
// `data["tls.crt"]` → "data", "spec.x[2]" → "spec.x". It returns "" for a
// top-level field and for a path it cannot parse.
func parentPath(p string) string {
	last := 0 // start of the last element
	for i := 0; i < len(p); {
		switch p[i] {
		case '.':
			last = i
			i++
		case '[':
			last = i
			if i+1 < len(p) && p[i+1] == '"' {
				q, err := strconv.QuotedPrefix(p[i+1:])
				if err != nil {
					return ""
				}
				i += 1 + len(q)
			}
			j := strings.IndexByte(p[i:], ']')
			if j < 0 {
				return ""
			}
			i += j + 1
		default:
			i++
		}
	}
	return p[:last]
}
