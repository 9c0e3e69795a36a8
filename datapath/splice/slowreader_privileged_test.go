package splice

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// sockstatTCPMem returns /proc/net/sockstat's TCP mem (pages) in bytes.
func sockstatTCPMem(tb testing.TB) int64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := range f[:len(f)-1] {
			if f[i] == "mem" {
				n, _ := strconv.ParseInt(f[i+1], 10, 64)
				return n * int64(os.Getpagesize())
			}
		}
	}
	tb.Fatal("no TCP mem in /proc/net/sockstat")
	return 0
}

// skmem is a socket's memory as `ss -tm` shows it.
type skmem struct{ r, rb, t, tb, w int64 }

func (m skmem) held() int64 { return m.r + m.w }

// ssMem returns ss -tm's skmem of the socket with local address local and
// remote address remote.
func ssMem(tb testing.TB, local, remote net.Addr) skmem {
	tb.Helper()
	out, err := exec.Command("ss", "-tmnH", "state", "established",
		"src", local.String(), "dst", remote.String()).Output()
	if err != nil {
		tb.Fatalf("ss: %v", err)
	}
	var m skmem
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		i := strings.Index(l, "skmem:(")
		if i < 0 {
			continue
		}
		for _, kv := range strings.Split(strings.TrimSuffix(l[i+7:], ")"), ",") {
			var k string
			var v int64
			for j, ch := range kv {
				if ch >= '0' && ch <= '9' {
					k = kv[:j]
					v, _ = strconv.ParseInt(kv[j:], 10, 64)
					break
				}
			}
			switch k {
			case "r":
				m.r = v
			case "rb":
				m.rb = v
			case "t":
				m.t = v
			case "tb":
				m.tb = v
			case "w":
				m.w = v
			}
		}
	}
	return m
}

func fmtMiB(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }
