// Package privtest holds the helpers of the datapath's privileged tests:
// one gate that skips without root (and fails instead under CI=true, where
// a skipped kernel test would hide a broken datapath) and a private bpffs
// pin directory per test.
package privtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// BPFRoot is where test pin directories are created.
const BPFRoot = "/sys/fs/bpf"

// Require skips the test unless it runs as root with a bpffs it can use;
// under CI=true it fails instead, because CI must exercise the kernel
// path. It mounts bpffs on /sys/fs/bpf when nothing is mounted there.
func Require(tb testing.TB) {
	tb.Helper()
	reason := ""
	switch {
	case os.Geteuid() != 0:
		reason = "needs root (CAP_BPF, CAP_NET_ADMIN) for real BPF"
	default:
		if err := ensureBPFFS(); err != nil {
			reason = "no bpffs at " + BPFRoot + ": " + err.Error()
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("privileged test cannot run under CI=true: %s", reason)
	}
	tb.Skip(reason)
}

func ensureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(BPFRoot, &st); err != nil {
		return err
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", BPFRoot, "bpf", 0, ""); err != nil {
		return err
	}
	if err := unix.Statfs(BPFRoot, &st); err != nil {
		return err
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return errors.New("mounted, but statfs does not report bpffs")
	}
	return nil
}

// PinDir returns a fresh, not yet existing pin directory on bpffs for
// one test and removes whatever is left in it when the test ends.
func PinDir(tb testing.TB) string {
	tb.Helper()
	parent, err := os.MkdirTemp(BPFRoot, "tcpmap-test-")
	if err != nil {
		tb.Fatalf("create test pin parent: %v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(parent) })
	return filepath.Join(parent, "tcpmap")
}

// netnsEnv marks the re-executed test binary running in its own network
// namespace.
const netnsEnv = "TCPMAP_TEST_NETNS"

// RunInNetNS runs the package's tests in a private network namespace
// when root: it re-executes the test binary with CLONE_NEWNET and returns
// the child's exit code, and in the child brings loopback up and runs m.
// A private namespace keeps the tests' loopback traffic, ports and
// `ss` output apart from whatever else runs on the machine (other test
// suites exhausting ephemeral ports with TIME_WAIT sockets, say). Without
// root it just runs m; the privileged tests then skip (or fail under CI).
func RunInNetNS(m interface{ Run() int }) int {
	if os.Geteuid() != 0 {
		return m.Run()
	}
	if os.Getenv(netnsEnv) == "1" {
		if err := loopbackUp(); err != nil {
			fmt.Fprintf(os.Stderr, "privtest: bring lo up in the test network namespace: %v\n", err)
			return 1
		}
		return m.Run()
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "privtest: re-exec in a new network namespace: %v\n", err)
		return 1
	}
	return 0
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// OpenFDs counts the process's open file descriptors.
func OpenFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// LeakChecked wraps a test run so that it fails when the tests leave
// goroutines or file descriptors behind (an unclosed map, program or
// engine is a leaked descriptor). Use it in TestMain, inside RunInNetNS.
func LeakChecked(m interface{ Run() int }) interface{ Run() int } { return leakCheck{m} }

type leakCheck struct{ m interface{ Run() int } }

func (l leakCheck) Run() int {
	before := OpenFDs()
	code := l.m.Run()
	if code != 0 {
		return code
	}
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "goroutine leak: %v\n", err)
		return 1
	}
	if after := OpenFDs(); after > before {
		fmt.Fprintf(os.Stderr, "file descriptor leak: %d open before the tests, %d after\n", before, after)
		return 1
	}
	return 0
}
