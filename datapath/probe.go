package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// checkKernel refuses kernels older than minKernel and kernels without
// BTF, with the reason in the error.
func checkKernel() error {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return classify("uname", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	major, minor, ok := parseRelease(release)
	if !ok {
		return &UnavailableError{Reason: ReasonOther, Detail: "cannot parse kernel release " + release}
	}
	if major < minKernel[0] || (major == minKernel[0] && minor < minKernel[1]) {
		return &UnavailableError{Reason: ReasonKernelTooOld,
			Detail: fmt.Sprintf("kernel %s < %d.%d (sockmap FIN, stall and copied_seq fixes)",
				release, minKernel[0], minKernel[1])}
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return &UnavailableError{Reason: ReasonNoKernelBTF,
			Detail: "kernel built without CONFIG_DEBUG_INFO_BTF", Err: err}
	}
	return nil
}

// parseRelease reads "6.18.44-fc" as 6, 18.
func parseRelease(r string) (major, minor int, ok bool) {
	parts := strings.SplitN(r, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	end := strings.IndexFunc(parts[1], func(c rune) bool { return c < '0' || c > '9' })
	if end < 0 {
		end = len(parts[1])
	}
	minor, err2 := strconv.Atoi(parts[1][:end])
	return major, minor, err1 == nil && err2 == nil
}

// checkBPFFS makes sure dir is (or will be created) on a mounted bpffs:
// pinning anywhere else fails, and a tmpfs that looks right would lose the
// pins' meaning.
func checkBPFFS(dir string) error {
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return &UnavailableError{Reason: ReasonNoBPFFS,
					Detail: fmt.Sprintf("%s is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)", dir)}
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return classify("statfs "+p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return &UnavailableError{Reason: ReasonNoBPFFS, Detail: dir + " has no existing parent"}
		}
		p = parent
	}
}
