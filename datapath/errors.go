package datapath

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Reason says in one word why the eBPF datapath is unavailable. The values
// are stable: they end up in logs and metrics labels.
type Reason string

// Reasons the eBPF datapath can be unavailable.
const (
	// ReasonForced: Options.ForceFailure or TCPMAP_FORCE_BPF_FAIL=1 (a test
	// hook for the userspace fallback).
	ReasonForced Reason = "forced"
	// ReasonNoBPFFS: the pin directory is not on a mounted bpffs.
	ReasonNoBPFFS Reason = "no-bpffs"
	// ReasonNoPermission: creating maps or loading programs was refused
	// (no CAP_BPF and CAP_NET_ADMIN, or not root).
	ReasonNoPermission Reason = "no-permission"
	// ReasonKernelTooOld: the kernel lacks a feature the datapath needs.
	ReasonKernelTooOld Reason = "kernel-too-old"
	// ReasonNoKernelBTF: /sys/kernel/btf/vmlinux is missing, so the
	// verdict's CO-RE field offsets cannot be resolved.
	ReasonNoKernelBTF Reason = "no-kernel-btf"
	// ReasonVerifier: the kernel's verifier rejected the program.
	ReasonVerifier Reason = "verifier"
	// ReasonPinDirBusy: another live process holds the pin directory.
	ReasonPinDirBusy Reason = "pin-dir-busy"
	// ReasonOther: anything else; the wrapped error says what.
	ReasonOther Reason = "error"
)

// ForceFailEnv, when set to 1 in the environment, makes Load fail with
// ReasonForced. It exists so end-to-end tests can exercise the
// userspace fallback of `--datapath auto` against the real binary.
const ForceFailEnv = "TCPMAP_FORCE_BPF_FAIL"

// UnavailableError is returned by Load when the eBPF datapath cannot run
// on this machine. Its message is one line meant for the fallback log of
// `--datapath auto`.
type UnavailableError struct {
	Reason Reason
	// Detail is a short human explanation, e.g. "kernel 5.15 < 6.4".
	Detail string
	Err    error
}

func (e *UnavailableError) Error() string {
	var b strings.Builder
	b.WriteString("ebpf datapath unavailable (")
	b.WriteString(string(e.Reason))
	b.WriteString(")")
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(oneLine(e.Err.Error()))
	}
	return b.String()
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// Why returns the reason an error from Load names, and ReasonOther for any
// other error (nil for a nil error).
func Why(err error) Reason {
	if err == nil {
		return ""
	}
	var ue *UnavailableError
	if errors.As(err, &ue) {
		return ue.Reason
	}
	return ReasonOther
}

// classify wraps an error from loading or attaching in an
// UnavailableError with the most specific reason it can tell.
func classify(what string, err error) error {
	if err == nil {
		return nil
	}
	var ue *UnavailableError
	if errors.As(err, &ue) {
		return err
	}
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		return &UnavailableError{Reason: ReasonVerifier, Detail: what, Err: err}
	case errors.Is(err, unix.EPERM), errors.Is(err, os.ErrPermission), errors.Is(err, unix.EACCES):
		return &UnavailableError{Reason: ReasonNoPermission,
			Detail: what + " needs CAP_BPF and CAP_NET_ADMIN (or root)", Err: err}
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, errENOTSUPP), errors.Is(err, unix.EOPNOTSUPP):
		return &UnavailableError{Reason: ReasonKernelTooOld, Detail: what, Err: err}
	}
	return &UnavailableError{Reason: ReasonOther, Detail: what, Err: err}
}

// oneLine keeps the first line of a possibly multi-line message (verifier
// logs) so the fallback message stays one log line.
func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " (…)"
	}
	return s
}

// errPinned names a pinned object in errors.
func errPinned(path string, err error) error {
	return fmt.Errorf("pin %s: %w", path, err)
}

// errENOTSUPP is the kernel-internal ENOTSUPP (524) that some BPF commands
// leak to userspace for unsupported attach types.
const errENOTSUPP = unix.Errno(524)
