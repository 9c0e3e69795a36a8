//go:build linux

package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// blackhole listens on ip with an accept queue of one and fills it, so that
// Linux drops further SYNs: a connect to it hangs like one to a host that
// never answers, without leaving loopback. It returns the port.
func blackhole(t *testing.T, ip string, port int) int {
	t.Helper()
	addr := netip.MustParseAddr(ip)
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: port, Addr: addr.As16()}
	if addr.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: port, Addr: addr.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "blackhole")
	t.Cleanup(func() { f.Close() })
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatalf("bind %s:%d: %v", ip, port, err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		port = b.Port
	case *unix.SockaddrInet6:
		port = b.Port
	}
	// Connect until one attempt hangs: the queue is full from then on.
	target := net.JoinHostPort(ip, fmt.Sprint(port))
	for range 8 {
		c, err := net.DialTimeout("tcp", target, 300*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return port
			}
			t.Fatalf("fill accept queue of %s: %v", target, err)
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skipf("skipping: cannot make %s drop SYNs (accept queue never filled)", target)
	return 0
}

func TestConnectTimeout(t *testing.T) {
	ctx := testCtx(t)
	port := blackhole(t, "127.0.0.1", 0)
	d := NewDialer(Options{Resolver: noResolver(t)})

	start := time.Now()
	c, err := d.Dial(ctx, upstreamFor("127.0.0.1", port, true, true), 300*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatal("Dial succeeded against a full accept queue")
	}
	prefix := fmt.Sprintf("dial upstream 127.0.0.1:%d: timeout after 300ms: connect to 127.0.0.1:%d: timeout after ", port, port)
	t.Logf("error: %v", err)
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("err = %q, want prefix %q", err, prefix)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Dial took %v with a 300ms timeout", elapsed)
	}
}

func TestIPv6TimeoutFallsBackToIPv4(t *testing.T) {
	requireIPv6(t)
	ctx := testCtx(t)
	port := blackhole(t, "::1", 0)
	ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Skipf("skipping: port %d taken on 127.0.0.1: %v", port, err)
	}
	srv := serve(t, ln)
	d := NewDialer(Options{Resolver: &fakeResolver{answer: answers("::1", "127.0.0.1")}})

	// IPv6 gets half of the second and times out; IPv4 gets the rest.
	c, err := d.Dial(ctx, upstreamFor("hole.test", port, true, true), time.Second)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if got := remoteIP(t, c); got != "127.0.0.1" {
		t.Errorf("reached %s, want 127.0.0.1", got)
	}
	waitFor(t, "accept", func() bool { return srv.accepted.Load() == 1 })
}

func TestSocketOptions(t *testing.T) {
	ctx := testCtx(t)
	_, port := listenSamePort(t, "127.0.0.1")
	d := NewDialer(Options{Resolver: noResolver(t)})
	c, err := d.Dial(ctx, upstreamFor("127.0.0.1", port, true, true), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name       string
		level, opt int
		want       int
	}{
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 30},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 10},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3},
	}
	if cerr := raw.Control(func(fd uintptr) {
		for _, w := range want {
			got, err := unix.GetsockoptInt(int(fd), w.level, w.opt)
			if err != nil {
				t.Errorf("getsockopt %s: %v", w.name, err)
				continue
			}
			// SO_KEEPALIVE and TCP_NODELAY report any non-zero value as on.
			if (w.want == 1 && got == 0) || (w.want != 1 && got != w.want) {
				t.Errorf("%s = %d, want %d", w.name, got, w.want)
			}
		}
	}); cerr != nil {
		t.Fatal(cerr)
	}
}
