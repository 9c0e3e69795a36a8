package datapath

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// MountBPFFS mounts a bpffs on dir unless one is there already, and says
// which. It needs CAP_SYS_ADMIN; `tcpmapd mount-bpffs` runs it where the
// daemon itself should not hold that capability (the DaemonSet's
// privileged init container, the systemd unit's ExecStartPre), so that
// pins land on a bpffs the host sees rather than in a container's /sys.
func MountBPFFS(dir string) (mounted bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return false, nil
	}
	// mode=0700: pins are the daemon's, as on systemd's own bpffs mount.
	if err := unix.Mount("bpf", dir, "bpf", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return true, nil
}
