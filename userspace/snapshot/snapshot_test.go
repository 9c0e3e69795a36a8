package snapshot

import (
	"fmt"
	"testing"

	"github.com/tcpmap/tcpmap/userspace/config"
)

func route(weights ...int) *Route {
	r := &Route{}
	for i, w := range weights {
		r.Backends = append(r.Backends, Backend{
			Mapping: config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: fmt.Sprint("m", i)},
			Weight:  w,
		})
	}
	return r
}

// TestPickIsExact walks every value of the draw once: each backend must own
// exactly its weight's share, so the split is exact in expectation (no
// running-total bug that turns 70/30 into 77/23).
func TestPickIsExact(t *testing.T) {
	for _, weights := range [][]int{{100}, {80, 20}, {70, 30}, {50, 25, 25}, {1, 99}, {0, 100}, {33, 33, 34}, {10, 10}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			r := route(weights...)
			got := make(map[string]int)
			for x := 0; x < r.TotalWeight(); x++ {
				got[r.Pick(x).Mapping.Name]++
			}
			for i, w := range weights {
				name := fmt.Sprint("m", i)
				if got[name] != w {
					t.Errorf("backend %s picked %d times out of %d, want %d", name, got[name], r.TotalWeight(), w)
				}
			}
		})
	}
}

func TestPickEmptyRoute(t *testing.T) {
	if b := route().Pick(0); b != nil {
		t.Fatalf("Pick on an empty route = %v, want nil", b)
	}
}

func TestRouteForSNI(t *testing.T) {
	l := &Listener{Protocol: ProtocolTLS, Routes: []Route{
		{Host: "*"}, {Host: "*.example.com"}, {Host: "a.example.com"}, {Host: "*.b.example.com"},
	}}
	tests := []struct {
		sni  string
		want string
	}{
		{"a.example.com", "a.example.com"},
		{"A.Example.COM.", "a.example.com"},
		{"x.example.com", "*.example.com"},
		{"x.b.example.com", "*.b.example.com"},
		{"example.com", "*"},
		{"", "*"},
		{"other.org", "*"},
	}
	for _, tt := range tests {
		if got := l.RouteForSNI(tt.sni); got == nil || got.Host != tt.want {
			t.Errorf("RouteForSNI(%q) = %v, want %q", tt.sni, got, tt.want)
		}
	}
	noStar := &Listener{Routes: []Route{{Host: "*.example.com"}}}
	for _, sni := range []string{"example.com", "", "a.example.org"} {
		if got := noStar.RouteForSNI(sni); got != nil {
			t.Errorf("RouteForSNI(%q) without a * route = %q, want nil", sni, got.Host)
		}
	}
}

func TestGlobMatches(t *testing.T) {
	tests := []struct {
		glob, host string
		want       bool
	}{
		{"*", "anything.example.com", true},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "*.a.example.com", true},
		{"*.example.com", "example.com", false},
		{"a.example.com", "a.example.com", true},
		{"a.example.com", "*.example.com", false},
		{"*.example.com", "a.example.org", false},
	}
	for _, tt := range tests {
		if got := GlobMatches(tt.glob, tt.host); got != tt.want {
			t.Errorf("GlobMatches(%q, %q) = %v, want %v", tt.glob, tt.host, got, tt.want)
		}
	}
}
