package daemon

import (
	"errors"
	"testing"
)

func TestChooseDatapath(t *testing.T) {
	tests := []struct {
		mode    string
		want    string
		wantErr error
	}{
		{mode: "userspace", want: DatapathUserspace},
		{mode: "auto", want: DatapathUserspace},
		{mode: "", want: DatapathUserspace},
		{mode: "ebpf", wantErr: ErrEBPFUnavailable},
		{mode: "xdp", wantErr: errAny},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			got, why, err := chooseDatapath(tt.mode)
			switch {
			case tt.wantErr == errAny:
				if err == nil {
					t.Fatalf("chooseDatapath(%q) = %q, want an error", tt.mode, got)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("chooseDatapath(%q) error = %v, want %v", tt.mode, err, tt.wantErr)
				}
			default:
				if err != nil || got != tt.want || why == "" {
					t.Fatalf("chooseDatapath(%q) = %q, %q, %v; want %q with a reason", tt.mode, got, why, err, tt.want)
				}
			}
		})
	}
}

var errAny = errors.New("any error")
