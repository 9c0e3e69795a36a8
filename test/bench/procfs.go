package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc/stat and /proc/<pid>/stat CPU
// times. It is 100 on every Linux architecture Go supports.
const clockTicks = 100

// procCPUSeconds returns utime+stime of a process (all its threads) in
// seconds, from /proc/<pid>/stat.
func procCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time of pid %d: %w", pid, err)
	}
	// The command name is in parentheses and may hold spaces; fields count
	// from after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ")": state(3) ppid(4) … utime(14) stime(15); f[0] is field 3.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields, want at least 15", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q not numbers", pid, f[11], f[12])
	}
	return float64(ut+st) / clockTicks, nil
}

// procParent returns the parent pid of pid.
func procParent(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	return strconv.Atoi(f[1])
}

// procRSSKiB returns VmRSS of a process in KiB, from /proc/<pid>/status.
func procRSSKiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				v, err := strconv.ParseFloat(f[0], 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, f[0], err)
				}
				return v, nil
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS line", pid)
}

// machineBusySeconds returns the CPU time all CPUs spent not idle since
// boot (user, nice, system, irq, softirq, steal) from /proc/stat.
func machineBusySeconds() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read machine cpu time: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: first line %q is not the cpu total", line)
	}
	var busy uint64
	// user nice system idle iowait irq softirq steal: skip idle (4) and iowait (5).
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: field %d %q: %w", i, f[i], err)
		}
		busy += v
	}
	return float64(busy) / clockTicks, nil
}

// tcpMemPages returns the "mem" field of the TCP line of /proc/net/sockstat:
// pages of memory charged to all TCP sockets of the machine.
func tcpMemPages() (int64, error) {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0, fmt.Errorf("read tcp memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "TCP:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				v, err := strconv.ParseInt(f[i+1], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/net/sockstat: TCP mem %q: %w", f[i+1], err)
				}
				return v, nil
			}
		}
	}
	return 0, fmt.Errorf("/proc/net/sockstat: no TCP mem field")
}

var skmemRE = regexp.MustCompile(`skmem:\(([^)]*)\)`)

// socketQueuedBytes sums, over the established TCP sockets that have one of
// ports as local or remote port, the bytes each holds in its receive queue
// (skmem r, sk_rmem_alloc) and send queue (skmem w, sk_wmem_queued), as
// `ss -tmn` reports them. ok is false when ss is not installed.
func socketQueuedBytes(ctx context.Context, ports ...int) (total int64, ok bool, err error) {
	ss, err := exec.LookPath("ss")
	if err != nil {
		return 0, false, nil
	}
	var filter []string
	for _, p := range ports {
		filter = append(filter, fmt.Sprintf("sport = :%d or dport = :%d", p, p))
	}
	args := []string{"-tmnH", "state", "established", "( " + strings.Join(filter, " or ") + " )"}
	out, err := exec.CommandContext(ctx, ss, args...).Output()
	if err != nil {
		return 0, true, fmt.Errorf("ss %s: %w", strings.Join(args, " "), err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := skmemRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		total += skmemField(m[1], "r") + skmemField(m[1], "w")
	}
	return total, true, sc.Err()
}

// skmemField returns one field of an skmem list such as
// "r0,rb131072,t0,tb2626560,f0,w0,o0,bl0,d0"; a prefix must match exactly
// (r is not rb).
func skmemField(list, name string) int64 {
	for _, kv := range strings.Split(list, ",") {
		i := strings.IndexFunc(kv, func(r rune) bool { return r >= '0' && r <= '9' })
		if i <= 0 || kv[:i] != name {
			continue
		}
		v, err := strconv.ParseInt(kv[i:], 10, 64)
		if err == nil {
			return v
		}
	}
	return 0
}

// countFDs returns how many descriptors a process has open.
func countFDs(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, fmt.Errorf("count descriptors of pid %d: %w", pid, err)
	}
	return len(ents), nil
}

// procNoFile returns a process's soft RLIMIT_NOFILE from /proc/<pid>/limits,
// or 0 when unknown or unlimited.
func procNoFile(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, err := strconv.Atoi(f[0])
				if err == nil {
					return v
				}
			}
		}
	}
	return 0
}
