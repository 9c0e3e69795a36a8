package relay

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// copySplicer stands in for the kernel datapath: it copies both ways in
// goroutines of its own, so the relay's side of the hand-off (ownership,
// accounting, circuit breaker, close) is tested without BPF.
type copySplicer struct {
	decline atomic.Bool
	calls   atomic.Int32
	mu      sync.Mutex
	infos   []SpliceInfo
}

type copySpliced struct {
	client, up *net.TCPConn
	once       sync.Once
	done       func(SpliceResult)
	reset      atomic.Bool
}

func (s *copySplicer) Splice(client, up *net.TCPConn, info SpliceInfo, done func(SpliceResult)) (SplicedConn, error) {
	s.calls.Add(1)
	if s.decline.Load() {
		return nil, errors.New("declined by test")
	}
	s.mu.Lock()
	s.infos = append(s.infos, info)
	s.mu.Unlock()
	sc := &copySpliced{client: client, up: up, done: done}
	var toUp, toClient int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); toUp, _ = io.Copy(up, client); up.CloseWrite() }()
	go func() { defer wg.Done(); toClient, _ = io.Copy(client, up); client.CloseWrite() }()
	go func() {
		wg.Wait()
		sc.Close(false)
		done(SpliceResult{BytesToUpstream: toUp, BytesToClient: toClient, Reset: sc.reset.Load()})
	}()
	return sc, nil
}

func (c *copySpliced) Close(reset bool) {
	c.once.Do(func() {
		c.reset.Store(reset)
		c.client.Close()
		c.up.Close()
	})
}

func TestSplicerTakesCleartextConnections(t *testing.T) {
	sp := &copySplicer{}
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	b := backend("m", up.addr(), 100)
	b.SendProxyProtocol = 0
	l := tcpListener(b)
	l.ProxyProtocol = true
	s, l := startRelay(t, l, Options{Splicer: sp})

	c := dial(t, relayAddr(l))
	// Bytes that arrive with the PROXY header are read by the relay: they
	// must reach the upstream before anything the splicer moves.
	header := proxyHeader(t, 1, "192.0.2.10:4242", "198.51.100.1:443")
	if _, err := c.Write(append(header, "early\n"...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if got, err := br.ReadString('\n'); err != nil || got != "up sni= cn=\n" {
		t.Fatalf("banner = %q, %v", got, err)
	}
	if got, err := br.ReadString('\n'); err != nil || got != "early\n" {
		t.Fatalf("early bytes echoed as %q, %v", got, err)
	}
	io.WriteString(c, "spliced\n")
	if got, err := br.ReadString('\n'); err != nil || got != "spliced\n" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	if sp.calls.Load() != 1 {
		t.Fatalf("splicer called %d times, want 1", sp.calls.Load())
	}
	// The splicer may move bytes before Splice has returned and the relay
	// has counted the hand-off, so wait for the counters.
	waitFor(t, "the hand-off to be counted", func() bool {
		got := s.Stats().Mappings[mappingRef("m")]
		return got.Spliced == 1 && got.Active == 1 && got.BytesToUpstream == uint64(len("early\n"))
	})
	halfClose(c)
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	waitFor(t, "spliced connection accounted as ended", func() bool {
		st := s.Stats().Mappings[mappingRef("m")]
		return st.Active == 0 && st.KernelBytesToUpstream == uint64(len("spliced\n")) && s.Stats().Listener.Active == 0
	})
}

func TestSplicerHoldsBreakerSlotUntilDone(t *testing.T) {
	sp := &copySplicer{}
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	l := tcpListener(backend("m", up.addr(), 100))
	l.Routes[0].CircuitBreaker = snapshot.CircuitBreaker{MaxConnections: 1, MaxPendingRequests: 1}
	_, l = startRelay(t, l, Options{Splicer: sp})

	first := dial(t, relayAddr(l))
	if got := readLine(t, first); got != "up sni= cn=" {
		t.Fatalf("first banner %q", got)
	}
	// Over max_connections: reset without reaching the upstream. The
	// reset can land before connect returns, so the dial itself may fail.
	expectReset(t, relayAddr(l))
	first.Close()
	waitFor(t, "slot released after the spliced connection ended", func() bool {
		c, err := net.Dial("tcp", relayAddr(l))
		if err != nil {
			return false
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		return err == nil && line == "up sni= cn=\n"
	})
}

func TestSplicerDeclinedFallsBackToRelay(t *testing.T) {
	sp := &copySplicer{}
	sp.decline.Store(true)
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	s, l := startRelay(t, tcpListener(backend("m", up.addr(), 100)), Options{Splicer: sp})
	c := dial(t, relayAddr(l))
	readLine(t, c)
	echoRoundTrip(t, c, "relayed")
	if st := s.Stats().Mappings[mappingRef("m")]; st.SpliceDeclined != 1 || st.Spliced != 0 {
		t.Errorf("stats %+v, want one declined splice", st)
	}
}

func TestSplicerNotUsedForTLS(t *testing.T) {
	sp := &copySplicer{}
	pki := newPKI(t)
	up := startUpstream(t, "up", upstreamTLS(t, pki), bannerEcho("up"))
	b := backend("m", up.addr(), 100)
	b.Origination = &snapshot.TLSClient{ServerName: "upstream.test"}
	_, l := startRelay(t, tcpListener(b), Options{Splicer: sp})
	c := dial(t, relayAddr(l))
	readLine(t, c)
	echoRoundTrip(t, c, "originated")
	if n := sp.calls.Load(); n != 0 {
		t.Fatalf("splicer called %d times for a TLS-originating backend", n)
	}
}

func TestServerCloseEndsSplicedConnections(t *testing.T) {
	sp := &copySplicer{}
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	s, l := startRelay(t, tcpListener(backend("m", up.addr(), 100)), Options{Splicer: sp})
	c := dial(t, relayAddr(l))
	readLine(t, c)
	s.Close() // must return: the spliced connection is closed through the splicer
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Fatalf("client after Close: %v", err)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne)
}

func TestConnsReportDatapathAndWhy(t *testing.T) {
	sp := &copySplicer{}
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	relayed, lr := startRelay(t, tcpListener(backend("r", up.addr(), 100)), Options{})
	spliced, ls := startRelay(t, tcpListener(backend("k", up.addr(), 100)), Options{Splicer: sp})
	idle := tcpListener(backend("i", up.addr(), 100))
	idle.Routes[0].IdleTimeout = time.Minute
	idled, li := startRelay(t, idle, Options{}) // no kernel datapath: the relay must see activity

	for _, addr := range []string{relayAddr(lr), relayAddr(ls), relayAddr(li)} {
		c := dial(t, addr)
		readLine(t, c)
		echoRoundTrip(t, c, "x")
	}
	tests := []struct {
		srv          *Server
		mapping      string
		datapath     string
		whyContains  string
		wantUpstream int64 // bytes this process moved to the upstream
	}{
		// splice(2) counts per 1 MiB chunk or at the end of a direction,
		// so a live two-byte exchange shows 0 yet.
		{relayed, "r", DatapathRelaySplice, "cleartext", 0},
		{spliced, "k", DatapathKernel, "kernel", 0},
		{idled, "i", DatapathRelayCopy, "idle timeout", 1},
	}
	for _, tt := range tests {
		var got []ConnInfo
		waitFor(t, "byte counters of "+tt.mapping, func() bool {
			got = tt.srv.Conns()
			return len(got) == 1 && got[0].BytesToUpstream == tt.wantUpstream
		})
		c := got[0]
		if c.Mapping != mappingRef(tt.mapping) || c.Datapath != tt.datapath || !strings.Contains(c.Why, tt.whyContains) {
			t.Errorf("%s: conn %+v, want datapath %s why ~%q", tt.mapping, c, tt.datapath, tt.whyContains)
		}
		if (c.Spliced != nil) != (tt.datapath == DatapathKernel) {
			t.Errorf("%s: Spliced handle %v for datapath %s", tt.mapping, c.Spliced, c.Datapath)
		}
	}
}

func TestObserveDial(t *testing.T) {
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	type obs struct {
		mapping string
		failed  bool
	}
	got := make(chan obs, 4)
	observe := func(m config.Ref, took time.Duration, err error) {
		if took < 0 {
			t.Errorf("negative dial duration %v", took)
		}
		got <- obs{m.Name, err != nil}
	}
	_, l := startRelay(t, tcpListener(backend("ok", up.addr(), 100)), Options{ObserveDial: observe})
	c := dial(t, relayAddr(l))
	readLine(t, c)
	if o := <-got; o != (obs{"ok", false}) {
		t.Errorf("observed %+v, want a successful dial of ok", o)
	}

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	_, l2 := startRelay(t, tcpListener(backend("refused", snapshot.Upstream{Host: "127.0.0.1", Port: port, EnableIPv4: true}, 100)),
		Options{ObserveDial: observe})
	// The relay resets the client when the dial fails, possibly before
	// the client's own connect returns: either way is fine here.
	if c2, err := net.DialTimeout("tcp", relayAddr(l2), ioTimeout); err == nil {
		c2.SetDeadline(time.Now().Add(ioTimeout))
		io.ReadAll(c2)
		c2.Close()
	}
	if o := <-got; o != (obs{"refused", true}) {
		t.Errorf("observed %+v, want a failed dial of refused", o)
	}
}
