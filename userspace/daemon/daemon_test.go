package daemon

import (
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestOpenDatapathUserspaceNeverLoadsBPF(t *testing.T) {
	// A pin directory that cannot exist: loading BPF would fail loudly.
	label, why, k, err := openDatapath(Options{Datapath: DatapathUserspace, BPFFS: "/nonexistent/bpffs"}, zap.NewNop())
	if err != nil || k != nil || label != LabelUserspace || why == "" {
		t.Fatalf("openDatapath(userspace) = %q, %q, %v, %v; want userspace with a reason and no kernel", label, why, k, err)
	}
}

func TestOpenDatapathRejectsUnknownMode(t *testing.T) {
	_, _, _, err := openDatapath(Options{Datapath: "xdp"}, zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "--datapath") {
		t.Fatalf("openDatapath(xdp) error = %v, want one naming --datapath", err)
	}
}
