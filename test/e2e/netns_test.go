package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netNS is a named network namespace created with `ip netns add`.
type netNS struct {
	name string
	fd   int // open /run/netns/<name>, for setns
}

var topoCounter atomic.Int64

// newNetNS creates a namespace with lo up; t.Cleanup deletes it.
func newNetNS(t testing.TB, name string) *netNS {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	ns := &netNS{name: name, fd: -1}
	t.Cleanup(func() {
		if ns.fd >= 0 {
			unix.Close(ns.fd)
		}
		if err := runErr("ip", "netns", "del", name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	fd, err := unix.Open(filepath.Join("/run/netns", name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	ns.fd = fd
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return ns
}

// do runs f on an OS thread switched into the namespace. Sockets created by
// f stay in the namespace after f returns. f must create its sockets on the
// calling goroutine (net.Listen, Dialer.DialContext to an IP literal do).
func (ns *netNS) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns.name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime ends it with this
			// goroutine instead of reusing a thread in the wrong namespace.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listen opens a TCP listener inside the namespace.
func (ns *netNS) listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := ns.do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// dial connects from inside the namespace; addr must be an IP literal.
func (ns *netNS) dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// Addresses of the test topology. They exist only inside the namespaces.
const (
	clientIP = "10.231.1.2"
	// proxyA and proxyB are two addresses of the proxy on the client side;
	// the `address:` tests bind to A and expect B to refuse.
	proxyA     = "10.231.1.1"
	proxyB     = "10.231.1.3"
	proxyUpIP  = "10.231.2.1"
	upstreamIP = "10.231.2.2"
)

// upstreamHosts are the names used by Emissary's examples and by the
// fixtures, each with its own address in the upstream namespace, written to
// the proxy namespace's /etc/hosts.
var upstreamHosts = []struct{ name, ip string }{
	{"upstream", "10.231.2.10"},
	{"cockroach", "10.231.2.11"},
	{"upstream-host-1", "10.231.2.12"},
	{"upstream-host-2", "10.231.2.13"},
	{"upstream-host", "10.231.2.14"},
	{"tls-upstream", "10.231.2.15"},
}

// hostIP returns the upstream address of a fixture host name.
func hostIP(t testing.TB, name string) string {
	t.Helper()
	for _, h := range upstreamHosts {
		if h.name == name {
			return h.ip
		}
	}
	t.Fatalf("no upstream host %q in the topology", name)
	return ""
}

// waitLinkUp waits until dev is operationally up with a real qdisc. Until
// the kernel's link watcher activates a new device (which it may defer by
// up to a second) its qdisc is noop and drops every packet, so the first
// SYNs would be lost and retransmitted a second later.
func waitLinkUp(t testing.TB, ns *netNS, dev string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("ip", "-n", ns.name, "-j", "link", "show", "dev", dev).Output()
		if err != nil {
			t.Fatalf("ip -n %s link show dev %s: %v", ns.name, dev, err)
		}
		var links []struct {
			OperState string `json:"operstate"`
			Qdisc     string `json:"qdisc"`
		}
		if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
			t.Fatalf("ip -n %s link show dev %s: %q: %v", ns.name, dev, out, err)
		}
		if links[0].OperState == "UP" && links[0].Qdisc != "noop" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s not up: operstate %s qdisc %s", dev, ns.name, links[0].OperState, links[0].Qdisc)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// topology is client ns ⇄ proxy ns ⇄ upstream ns.
type topology struct {
	t                       testing.TB
	client, proxy, upstream *netNS
	etcDir                  string // /etc/netns/<proxy>
}

// newTopology builds the three namespaces, the veth pairs, the addresses and
// the proxy's hosts file. Everything is removed by t.Cleanup, also when the
// test fails or panics.
func newTopology(t testing.TB) *topology {
	t.Helper()
	requireRoot(t)
	base := fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), topoCounter.Add(1))
	tp := &topology{t: t}
	tp.client = newNetNS(t, base+"-c")
	tp.proxy = newNetNS(t, base+"-p")
	tp.upstream = newNetNS(t, base+"-u")

	// The veths are created inside the namespaces, so their names never
	// touch the host's namespace and deleting a namespace deletes them.
	run(t, "ip", "-n", tp.client.name, "link", "add", "c0", "type", "veth", "peer", "name", "p0", "netns", tp.proxy.name)
	run(t, "ip", "-n", tp.proxy.name, "link", "add", "p1", "type", "veth", "peer", "name", "u0", "netns", tp.upstream.name)

	run(t, "ip", "-n", tp.client.name, "addr", "add", clientIP+"/24", "dev", "c0")
	run(t, "ip", "-n", tp.proxy.name, "addr", "add", proxyA+"/24", "dev", "p0")
	run(t, "ip", "-n", tp.proxy.name, "addr", "add", proxyB+"/24", "dev", "p0")
	run(t, "ip", "-n", tp.proxy.name, "addr", "add", proxyUpIP+"/24", "dev", "p1")
	run(t, "ip", "-n", tp.upstream.name, "addr", "add", upstreamIP+"/24", "dev", "u0")
	for _, h := range upstreamHosts {
		run(t, "ip", "-n", tp.upstream.name, "addr", "add", h.ip+"/24", "dev", "u0")
	}
	run(t, "ip", "-n", tp.client.name, "link", "set", "c0", "up")
	run(t, "ip", "-n", tp.proxy.name, "link", "set", "p0", "up")
	run(t, "ip", "-n", tp.proxy.name, "link", "set", "p1", "up")
	run(t, "ip", "-n", tp.upstream.name, "link", "set", "u0", "up")
	for _, l := range []struct {
		ns  *netNS
		dev string
	}{{tp.client, "c0"}, {tp.proxy, "p0"}, {tp.proxy, "p1"}, {tp.upstream, "u0"}} {
		waitLinkUp(t, l.ns, l.dev)
	}

	tp.etcDir = filepath.Join("/etc/netns", tp.proxy.name)
	if err := os.MkdirAll(tp.etcDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(tp.etcDir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	var hosts strings.Builder
	hosts.WriteString("127.0.0.1 localhost\n::1 localhost\n")
	for _, h := range upstreamHosts {
		fmt.Fprintf(&hosts, "%s %s\n", h.ip, h.name)
	}
	if err := os.WriteFile(filepath.Join(tp.etcDir, "hosts"), []byte(hosts.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return tp
}
