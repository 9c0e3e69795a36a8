package datapath

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func TestParseRelease(t *testing.T) {
	for _, tc := range []struct {
		in           string
		major, minor int
		ok           bool
	}{
		{"6.18.44-fc-v657", 6, 18, true},
		{"6.4.0", 6, 4, true},
		{"5.15.0-91-generic", 5, 15, true},
		{"6.10-rc3", 6, 10, true},
		{"6.1+", 6, 1, true},
		{"garbage", 0, 0, false},
	} {
		major, minor, ok := parseRelease(tc.in)
		if major != tc.major || minor != tc.minor || ok != tc.ok {
			t.Errorf("parseRelease(%q) = %d, %d, %v; want %d, %d, %v", tc.in, major, minor, ok, tc.major, tc.minor, tc.ok)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Reason
	}{
		{fmt.Errorf("create map: %w", unix.EPERM), ReasonNoPermission},
		{fmt.Errorf("attach: %w", ebpf.ErrNotSupported), ReasonKernelTooOld},
		{fmt.Errorf("attach: %w", errENOTSUPP), ReasonKernelTooOld},
		{&ebpf.VerifierError{}, ReasonVerifier},
		{errors.New("something else"), ReasonOther},
		{&UnavailableError{Reason: ReasonNoBPFFS}, ReasonNoBPFFS},
	} {
		if got := Why(classify("load", tc.err)); got != tc.want {
			t.Errorf("Why(classify(%v)) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if got := Why(nil); got != "" {
		t.Errorf("Why(nil) = %q", got)
	}
	if got := Why(errors.New("plain")); got != ReasonOther {
		t.Errorf("Why(plain error) = %q", got)
	}
}

func TestUnavailableErrorIsOneLine(t *testing.T) {
	err := &UnavailableError{Reason: ReasonVerifier, Detail: "load splice_verdict",
		Err: errors.New("permission denied: R1 invalid mem access\n0: (79) r2 = ...\n1: ...")}
	want := "ebpf datapath unavailable (verifier): load splice_verdict: permission denied: R1 invalid mem access (…)"
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q\nwant      %q", got, want)
	}
	if !errors.Is(err, err.Err) {
		t.Error("UnavailableError does not unwrap to its cause")
	}
}
