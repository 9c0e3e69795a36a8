package steer

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/datapath"
	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

func openSteerer(t *testing.T) (*datapath.Objects, *Steerer) {
	t.Helper()
	privtest.Require(t)
	objs, err := datapath.Load(datapath.Options{PinDir: privtest.PinDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := objs.Close(); err != nil {
			t.Error(err)
		}
	})
	if ok, why := objs.Steering(); !ok {
		t.Fatalf("sk_lookup steering unavailable on this kernel: %v", why)
	}
	s, err := New(objs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return objs, s
}

// echoOnce accepts connections on ln and writes back a tag and what it read.
func serve(t *testing.T, ln net.Listener, tag string) {
	t.Helper()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				c.Write(append([]byte(tag+":"), buf[:n]...))
			}()
		}
	}()
}

func roundTrip(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestSteerDispatchesByDestination(t *testing.T) {
	objs, s := openSteerer(t)
	exact, err := s.Listen("127.0.0.1:17000", "127.0.0.1", 17000)
	if err != nil {
		t.Fatal(err)
	}
	defer exact.Close()
	wild, err := s.Listen("*:17001", "", 17001)
	if err != nil {
		t.Fatal(err)
	}
	defer wild.Close()
	serve(t, exact, "exact")
	serve(t, wild, "wild")

	for _, tt := range []struct{ addr, want string }{
		{"127.0.0.1:17000", "exact:ping"},
		{"127.0.0.1:17001", "wild:ping"},
		{"127.0.0.2:17001", "wild:ping"},
		{"[::1]:17001", "wild:ping"},
	} {
		got, err := roundTrip(tt.addr)
		if err != nil || got != tt.want {
			t.Errorf("through %s: got %q, %v; want %q", tt.addr, got, err, tt.want)
		}
	}
	// Not mapped: the kernel's own lookup finds nothing and refuses.
	for _, addr := range []string{"127.0.0.2:17000", "127.0.0.1:17002"} {
		if _, err := roundTrip(addr); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("unmapped %s: got %v, want connection refused", addr, err)
		}
	}

	dump, err := objs.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	if len(dump) != 3 {
		t.Fatalf("listeners map: got %d entries %+v, want 3 (one exact, two wildcard)", len(dump), dump)
	}
	stats, err := objs.ListenerStats()
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.AddrPort]uint64{}
	for _, d := range dump {
		if !d.Steered {
			t.Errorf("%v: not flagged steered", d.Endpoint)
		}
		got[netip.AddrPortFrom(d.Endpoint.Addr, d.Endpoint.Port)] = stats[d.ID].Steered
	}
	if n := stats[dump[0].ID].Steered; n != 1 {
		t.Errorf("exact listener steered %d connections, want 1", n)
	}
	// Both wildcard entries share the listener's id: 3 connections.
	var wildID uint32
	for _, d := range dump {
		if d.Endpoint.Port == 17001 {
			wildID = d.ID
		}
	}
	if n := stats[wildID].Steered; n != 3 {
		t.Errorf("wildcard listener steered %d connections, want 3 (%v)", n, got)
	}

	// Closing a listener stops its steering at once: refused, like a
	// closed listening socket.
	exact.Close()
	if _, err := roundTrip("127.0.0.1:17000"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after close: got %v, want connection refused", err)
	}
	if got, err := roundTrip("127.0.0.1:17001"); err != nil || got != "wild:ping" {
		t.Errorf("other listener after close: got %q, %v", got, err)
	}
}

func TestSteerRefusesTakenPorts(t *testing.T) {
	_, s := openSteerer(t)
	other, err := net.Listen("tcp", "127.0.0.1:17010")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := s.Listen("x", "127.0.0.1", 17010); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("port of another socket: got %v, want EADDRINUSE", err)
	}
	l, err := s.Listen("y", "", 17011)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := s.Listen("z", "", 17011); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("port steered already: got %v, want EADDRINUSE", err)
	}
}

func TestSyncTables(t *testing.T) {
	objs, _ := openSteerer(t)
	err := objs.SyncTables([]datapath.ListenerTable{{
		Name:      "*:7000",
		Endpoints: []datapath.Endpoint{{Addr: netip.IPv4Unspecified(), Port: 7000}},
		Mappings: []datapath.MappingTable{
			{Name: "default/a", Upstream: "a:80", Weight: 90, Flags: datapath.MappingSplice},
			{Name: "default/b", Upstream: "b:80", Weight: 10, Flags: datapath.MappingSplice, IdleTimeout: 1500 * time.Millisecond},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := objs.Mappings()
	if err != nil {
		t.Fatal(err)
	}
	idA, _ := objs.MappingID("default/a")
	idB, _ := objs.MappingID("default/b")
	if ms[idA].Upstream != "a:80" || ms[idA].Weight != 90 || ms[idB].Weight != 10 || ms[idB].IdleTimeout != 1500*time.Millisecond {
		t.Errorf("mappings: got %+v", ms)
	}
	ls, _ := objs.Listeners()
	if len(ls) != 1 || ls[0].Mappings != 2 || ls[0].Steered || ls[0].MappingIDs[0] != idA || ls[0].MappingIDs[1] != idB {
		t.Errorf("listeners: got %+v", ls)
	}
	// b removed: its entry goes, a's stays with the same id.
	err = objs.SyncTables([]datapath.ListenerTable{{
		Name:      "*:7000",
		Endpoints: []datapath.Endpoint{{Addr: netip.IPv4Unspecified(), Port: 7000}},
		Mappings:  []datapath.MappingTable{{Name: "default/a", Upstream: "a:80", Weight: 100}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ms, _ = objs.Mappings()
	if len(ms) != 1 || ms[idA].Weight != 100 {
		t.Errorf("after removing b: got %+v", ms)
	}
	if err := objs.SyncTables(nil); err != nil {
		t.Fatal(err)
	}
	ls, _ = objs.Listeners()
	ms, _ = objs.Mappings()
	if len(ls) != 0 || len(ms) != 0 {
		t.Errorf("after removing everything: listeners %+v, mappings %+v", ls, ms)
	}
}

// TestSteerBurstIsNotReset: a burst of connections arriving while the
// listener is not accepting waits in the kernel's accept queue, as with a
// socket of its own, instead of being reset.
func TestSteerBurstIsNotReset(t *testing.T) {
	_, s := openSteerer(t)
	l, err := s.Listen("*:17020", "", 17020)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const n = 1000
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			c, err := net.DialTimeout("tcp", "127.0.0.1:17020", 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			b, err := io.ReadAll(c)
			if err == nil && string(b) != "ok" {
				err = errors.New("got " + string(b))
			}
			errs <- err
		}()
	}
	// Not accepting for a while: the burst piles up.
	time.Sleep(300 * time.Millisecond)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	failed := 0
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			failed++
			if failed <= 3 {
				t.Errorf("connection: %v", err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d connections of the burst failed", failed, n)
	}
}
