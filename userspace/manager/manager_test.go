package manager

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoUpstream greets each connection with "name\n", then echoes.
type echoUpstream struct {
	ln   net.Listener
	wg   sync.WaitGroup
	port int
}

func newEchoUpstream(t *testing.T, name string) *echoUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &echoUpstream{ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				fmt.Fprintf(c, "%s\n", name)
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func listenerSpec(addr string, up *echoUpstream, mapping string) snapshot.Listener {
	return snapshot.Listener{
		Address:  addr,
		Port:     0, // the kernel picks; ListenerAddrs tells which
		Protocol: snapshot.ProtocolTCP,
		Routes: []snapshot.Route{{
			ConnectTimeout: time.Second,
			Backends: []snapshot.Backend{{
				Mapping:  config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: mapping},
				Weight:   100,
				Upstream: snapshot.Upstream{Host: "127.0.0.1", Port: up.port, EnableIPv4: true},
			}},
		}},
	}
}

func newManager(t *testing.T) *Manager {
	t.Helper()
	m := New(Options{
		Relay:        relay.Options{Dialer: upstream.NewDialer(upstream.Options{})},
		DrainTimeout: 5 * time.Second,
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return m
}

// client is one connection through the proxy that has read its upstream's
// greeting.
type client struct {
	conn     net.Conn
	r        *bufio.Reader
	upstream string
}

func dialThrough(t *testing.T, addr net.Addr) (*client, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	return &client{conn: c, r: r, upstream: strings.TrimSpace(name)}, nil
}

// echo proves the connection still moves bytes both ways.
func (c *client) echo(t *testing.T) {
	t.Helper()
	if _, err := fmt.Fprintln(c.conn, "ping"); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := c.r.ReadString('\n')
	if err != nil || got != "ping\n" {
		t.Fatalf("echo = %q, %v", got, err)
	}
}

func addrOf(t *testing.T, m *Manager, key string) net.Addr {
	t.Helper()
	a, ok := m.ListenerAddrs()[key]
	if !ok {
		t.Fatalf("listener %s not running; have %v", key, m.ListenerAddrs())
	}
	return a
}

func TestApplyLeavesUnchangedListenersAlone(t *testing.T) {
	a, b := newEchoUpstream(t, "a"), newEchoUpstream(t, "b")
	m := newManager(t)
	l1 := listenerSpec("127.0.0.1", a, "one")
	l2 := listenerSpec("127.0.0.2", b, "two")
	if p := m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{l1, l2}}); len(p) != 0 {
		t.Fatalf("Apply problems: %v", p)
	}
	addr1 := addrOf(t, m, l1.Key())
	live, err := dialThrough(t, addr1)
	if err != nil {
		t.Fatal(err)
	}

	// Same snapshot again: nothing changes, the live connection keeps going
	// and the listener keeps its socket.
	m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{l1, l2}})
	if got := addrOf(t, m, l1.Key()); got.String() != addr1.String() {
		t.Fatalf("unchanged listener rebound: %v -> %v", addr1, got)
	}
	live.echo(t)
}

func TestApplyChangedRoutesAffectOnlyNewConnections(t *testing.T) {
	a, b := newEchoUpstream(t, "a"), newEchoUpstream(t, "b")
	m := newManager(t)
	l := listenerSpec("127.0.0.1", a, "one")
	m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{l}})
	addr := addrOf(t, m, l.Key())
	old, err := dialThrough(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	if old.upstream != "a" {
		t.Fatalf("before update: upstream %q, want a", old.upstream)
	}

	changed := listenerSpec("127.0.0.1", b, "one")
	if p := m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{changed}}); len(p) != 0 {
		t.Fatalf("Apply problems: %v", p)
	}
	if got := addrOf(t, m, l.Key()); got.String() != addr.String() {
		t.Fatalf("updated listener rebound: %v -> %v", addr, got)
	}
	fresh, err := dialThrough(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.upstream != "b" {
		t.Fatalf("after update: new connection reached %q, want b", fresh.upstream)
	}
	old.echo(t) // still connected to a
}

func TestApplyRemovedListenerDrains(t *testing.T) {
	a := newEchoUpstream(t, "a")
	m := newManager(t)
	l := listenerSpec("127.0.0.1", a, "one")
	m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{l}})
	addr := addrOf(t, m, l.Key())
	live, err := dialThrough(t, addr)
	if err != nil {
		t.Fatal(err)
	}

	m.Apply(snapshot.Snapshot{})
	if _, ok := m.ListenerAddrs()[l.Key()]; ok {
		t.Fatal("removed listener still listed")
	}
	if c, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		c.Close()
		t.Fatal("removed listener still accepts connections")
	}
	live.echo(t) // draining, not cut
}

func TestApplyReportsBindFailureAndServesTheRest(t *testing.T) {
	a := newEchoUpstream(t, "a")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port

	m := newManager(t)
	clash := listenerSpec("127.0.0.1", a, "clash")
	clash.Port = busyPort
	ok := listenerSpec("127.0.0.3", a, "fine")
	problems := m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{clash, ok}})
	if len(problems) != 1 {
		t.Fatalf("problems = %v, want one bind failure", problems)
	}
	p := problems[0]
	if p.Ref.Name != "clash" || p.Field != "spec.port" || !strings.Contains(p.Reason, "127.0.0.1:"+strconv.Itoa(busyPort)) {
		t.Errorf("problem = %+v, want TCPMapping clash spec.port naming the address", p)
	}
	if _, err := dialThrough(t, addrOf(t, m, ok.Key())); err != nil {
		t.Fatalf("healthy listener: %v", err)
	}

	// Once the port is free, applying again opens it.
	busy.Close()
	if problems := m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{clash, ok}}); len(problems) != 0 {
		t.Fatalf("after freeing the port: %v", problems)
	}
	if _, err := dialThrough(t, addrOf(t, m, clash.Key())); err != nil {
		t.Fatalf("listener on freed port: %v", err)
	}
}

// TestApplyMovesAListenerBetweenAddresses: a port that goes from one
// address to all addresses in one Apply is free for the new bind, because
// the removed listener stops accepting before new ones open.
func TestApplyMovesAListenerBetweenAddresses(t *testing.T) {
	a := newEchoUpstream(t, "a")
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := probe.Addr().(*net.TCPAddr).Port
	probe.Close()

	m := newManager(t)
	one := listenerSpec("127.0.0.1", a, "m")
	one.Port = port
	if p := m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{one}}); len(p) != 0 {
		t.Fatalf("first Apply: %v", p)
	}
	all := listenerSpec("", a, "m")
	all.Port = port
	if p := m.Apply(snapshot.Snapshot{Listeners: []snapshot.Listener{all}}); len(p) != 0 {
		t.Fatalf("moving 127.0.0.1:%d to *:%d: %v", port, port, p)
	}
	if _, err := dialThrough(t, addrOf(t, m, all.Key())); err != nil {
		t.Fatal(err)
	}
}

// TestRetryFailedOpensAFreedPort: a listener whose port was taken opens on
// a later retry once the port is free, without a reload, and its problem
// goes away.
func TestRetryFailedOpensAFreedPort(t *testing.T) {
	a := newEchoUpstream(t, "a")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newManager(t)
	l := listenerSpec("127.0.0.1", a, "m")
	l.Port = busy.Addr().(*net.TCPAddr).Port
	m.mu.Lock()
	m.snap = snapshot.Snapshot{Listeners: []snapshot.Listener{l}}
	m.bindFailures = 1
	m.mu.Unlock()
	if n := m.RetryFailed(); n != 1 {
		t.Fatalf("RetryFailed with the port held = %d, want 1", n)
	}
	if p := m.Problems(); len(p) != 1 {
		t.Fatalf("problems = %v, want the bind failure", p)
	}
	busy.Close()
	if n := m.RetryFailed(); n != 0 {
		t.Fatalf("RetryFailed with the port free = %d, want 0", n)
	}
	if p := m.Problems(); len(p) != 0 {
		t.Errorf("problems after the retry = %v, want none", p)
	}
	if _, err := dialThrough(t, addrOf(t, m, l.Key())); err != nil {
		t.Fatal(err)
	}
}
