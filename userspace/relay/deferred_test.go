package relay

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A connection that ends below SpliceAfter never reaches the splicer and
// shows as relayed here; one that crosses it is handed over once, and
// every byte arrives in order on each side.
func TestSpliceAfterShortStaysLongHandsOver(t *testing.T) {
	sp := &copySplicer{}
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	srv, l := startRelay(t, tcpListener(backend("m", up.addr(), 100)), Options{Splicer: sp, SpliceAfterBytes: 64 << 10})

	short := dial(t, relayAddr(l))
	if got := readLine(t, short); got != "up sni= cn=" {
		t.Fatalf("banner %q", got)
	}
	echoRoundTrip(t, short, "small request")
	waitFor(t, "the short connection listed", func() bool { return len(srv.Conns()) == 1 })
	if c := srv.Conns()[0]; c.Datapath != DatapathRelayCopy || !strings.Contains(c.Why, "65536 bytes") {
		t.Errorf("short connection: datapath %s (%s), want relay-copy until 65536 bytes", c.Datapath, c.Why)
	}
	short.Close()
	if n := sp.calls.Load(); n != 0 {
		t.Fatalf("splicer called %d times for a connection below the threshold", n)
	}

	long := dial(t, relayAddr(l))
	br := bufio.NewReader(long)
	if got, err := br.ReadString('\n'); err != nil || got != "up sni= cn=\n" {
		t.Fatalf("banner %q, %v", got, err)
	}
	const size = 4 << 20
	sent := sendThenHalfClose(t, long, 7, size)
	n, got, err := hashAll(br)
	if err != nil || n != size {
		t.Fatalf("echo: %d bytes, %v; want %d", n, err, size)
	}
	if want := <-sent; got != want {
		t.Fatalf("echoed bytes differ: sha256 %x, sent %x", got, want)
	}
	if n := sp.calls.Load(); n != 1 {
		t.Fatalf("splicer called %d times, want once", n)
	}
	waitFor(t, "both connections accounted", func() bool {
		m := srv.Stats().Mappings[mappingRef("m")]
		return m.Total == 2 && m.Spliced == 1 && m.Active == 0
	})
	m := srv.Stats().Mappings[mappingRef("m")]
	small, banner := uint64(len("small request")), uint64(len("up sni= cn=\n"))
	if up := m.BytesToUpstream + m.KernelBytesToUpstream; up != size+small {
		t.Errorf("bytes to upstream %d here + %d kernel, want %d in all", m.BytesToUpstream, m.KernelBytesToUpstream, size+small)
	}
	if down := m.BytesToClient + m.KernelBytesToClient; down != size+2*banner+small {
		t.Errorf("bytes to client %d here + %d kernel, want %d in all", m.BytesToClient, m.KernelBytesToClient, size+2*banner+small)
	}
	if m.KernelBytesToUpstream == 0 || m.BytesToUpstream < 64<<10/2 {
		t.Errorf("split of bytes to upstream: %d here, %d kernel; want both sides of the threshold", m.BytesToUpstream, m.KernelBytesToUpstream)
	}
}

// The pause must not wait on a write whose peer waits on the direction
// that stopped. Here the upstream talks first: it writes its whole answer
// before it reads anything, so the client's upload soon blocks in the
// relay's write to the upstream, while the answer flows on. When the
// answer crosses the threshold, the upstream-to-client direction pauses,
// the upstream's answer stops being read, it never reaches its reading
// half, and the blocked write would wait forever. The attempt must be
// called off instead, and every byte arrive.
func TestSpliceAfterWriteStallDoesNotDeadlock(t *testing.T) {
	sp := &copySplicer{}
	const answer, upload = 48 << 20, 32 << 20
	received := make(chan [32]byte, 1)
	up := startUpstream(t, "up", nil, func(c net.Conn) {
		// A small receive buffer makes the upload block early, long
		// before the threshold.
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		writeRandom(c, 13, answer)
		n, sum, err := hashAll(c)
		if err != nil || n != upload {
			t.Errorf("upstream read %d bytes, %v; want %d", n, err, upload)
		}
		received <- sum
		halfClose(c)
	})
	srv, l := startRelay(t, tcpListener(backend("m", up.addr(), 100)), Options{Splicer: sp, SpliceAfterBytes: 16 << 20})

	c := dial(t, relayAddr(l))
	sent := sendThenHalfClose(t, c, 11, upload)
	n, got, err := hashAll(c)
	if err != nil || n != answer {
		t.Fatalf("answer: %d bytes, %v; want %d", n, err, answer)
	}
	if want, _ := writeRandom(io.Discard, 13, answer); got != want {
		t.Fatalf("answer differs: sha256 %x, want %x", got, want)
	}
	if s, r := <-sent, <-received; s != r {
		t.Fatalf("upload differs: upstream got sha256 %x, client sent %x", r, s)
	}
	waitFor(t, "connection accounted", func() bool { return srv.Stats().Mappings[mappingRef("m")].Active == 0 })
	t.Logf("splicer called %d time(s)", sp.calls.Load())
}

// A connection whose client half-closes before the threshold is crossed
// is finished here: a half-closed pair is about to end, and the answer
// still arrives whole.
func TestSpliceAfterHalfClosedStaysHere(t *testing.T) {
	sp := &copySplicer{}
	const answer = 1 << 20
	up := startUpstream(t, "up", nil, func(c net.Conn) {
		io.Copy(io.Discard, c) // the request, to its end
		writeRandom(c, 3, answer)
		halfClose(c)
	})
	srv, l := startRelay(t, tcpListener(backend("m", up.addr(), 100)), Options{Splicer: sp, SpliceAfterBytes: 64 << 10})

	c := dial(t, relayAddr(l))
	io.WriteString(c, "GET /big\n")
	c.CloseWrite()
	n, _, err := hashAll(c)
	if err != nil || n != answer {
		t.Fatalf("answer: %d bytes, %v; want %d", n, err, answer)
	}
	if calls := sp.calls.Load(); calls != 0 {
		t.Errorf("splicer called %d times after the client half-closed", calls)
	}
	waitFor(t, "connection accounted", func() bool {
		m := srv.Stats().Mappings[mappingRef("m")]
		return m.Active == 0 && m.BytesToClient == answer
	})
}

// Bytes read along with the PROXY header go first, then the rest of the
// stream, across the hand-off.
func TestSpliceAfterKeepsProxyPrefixFirst(t *testing.T) {
	sp := &copySplicer{}
	up := startUpstream(t, "up", nil, func(c net.Conn) { echo(c) })
	b := backend("m", up.addr(), 100)
	l := tcpListener(b)
	l.ProxyProtocol = true
	_, l = startRelay(t, l, Options{Splicer: sp, SpliceAfterBytes: 4 << 10})

	c := dial(t, relayAddr(l))
	header := proxyHeader(t, 1, "192.0.2.10:4242", "198.51.100.1:443")
	if _, err := c.Write(append(header, "early\n"...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if got, err := br.ReadString('\n'); err != nil || got != "early\n" {
		t.Fatalf("first echoed line %q, %v", got, err)
	}
	const size = 1 << 20
	sent := sendThenHalfClose(t, c, 5, size)
	n, got, err := hashAll(br)
	if err != nil || n != size || got != <-sent {
		t.Fatalf("echo after the prefix: %d bytes, %v, or different bytes", n, err)
	}
	if calls := sp.calls.Load(); calls != 1 {
		t.Errorf("splicer called %d times, want once", calls)
	}
}

// An idle connection is handed over when SpliceAfterTime passes, however
// few bytes it moved, and keeps working after.
func TestSpliceAfterTimeHandsOverIdle(t *testing.T) {
	sp := &copySplicer{}
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	srv, l := startRelay(t, tcpListener(backend("m", up.addr(), 100)),
		Options{Splicer: sp, SpliceAfterBytes: 1 << 30, SpliceAfterTime: 50 * time.Millisecond})

	c := dial(t, relayAddr(l))
	if got := readLine(t, c); got != "up sni= cn=" {
		t.Fatalf("banner %q", got)
	}
	waitFor(t, "the idle connection handed over", func() bool { return sp.calls.Load() == 1 })
	echoRoundTrip(t, c, "after the hand-off")
	waitFor(t, "the connection shown in the kernel", func() bool {
		conns := srv.Conns()
		return len(conns) == 1 && conns[0].Datapath == DatapathKernel
	})
}
