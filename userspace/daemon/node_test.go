package daemon

import (
	"strings"
	"testing"
)

func TestNodeAddresses(t *testing.T) {
	tests := []struct {
		spec, address string
		wantErr       string // "" means the listener may open
	}{
		{"10.0.0.1,fd00::1", "10.0.0.1", ""},
		{"10.0.0.1,fd00::1", "fd00::1", ""},
		{"10.0.0.1", "::ffff:10.0.0.1", ""},
		{"10.0.0.1", "10.0.0.2", "10.0.0.2 is not one of this node's addresses"},
		{"10.0.0.1", "example.com", `"example.com" is not an IP address`},
		{"auto", "127.0.0.1", ""},
		{"auto", "192.0.2.123", "192.0.2.123 is not one of this node's addresses"},
	}
	for _, tt := range tests {
		allowed, err := parseNodeAddresses(tt.spec)
		if err != nil || allowed == nil {
			t.Fatalf("parseNodeAddresses(%q): filter set %t, err %v; want a filter", tt.spec, allowed != nil, err)
		}
		got := allowed(tt.address)
		switch {
		case tt.wantErr == "" && got != nil:
			t.Errorf("%q allows %s: got %v, want nil", tt.spec, tt.address, got)
		case tt.wantErr != "" && (got == nil || !strings.Contains(got.Error(), tt.wantErr)):
			t.Errorf("%q allows %s: got %v, want %q", tt.spec, tt.address, got, tt.wantErr)
		}
	}
}

func TestNodeAddressesDefault(t *testing.T) {
	if f, err := nodeAddressFilter(Options{}); err != nil || f != nil {
		t.Errorf("without --kubernetes: filter set: %t, err %v; want every address allowed", f != nil, err)
	}
	if f, err := nodeAddressFilter(Options{Kubernetes: true}); err != nil || f == nil {
		t.Errorf("with --kubernetes: filter set: %t, err %v; want the node's addresses only", f != nil, err)
	}
	if f, err := nodeAddressFilter(Options{Kubernetes: true, NodeAddresses: "any"}); err != nil || f != nil {
		t.Errorf("with --kubernetes --node-addresses any: filter set: %t, err %v; want every address allowed", f != nil, err)
	}
	if _, err := parseNodeAddresses("10.0.0.1,nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("bad list: got %v, want an error naming the bad entry", err)
	}
}
