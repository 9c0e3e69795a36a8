package splice

import (
	"context"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/datapath"
	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

func TestIdleTimeout(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	const idle = 500 * time.Millisecond
	quiet := r.pair(pairOpts{idle: idle})
	busy := r.pair(pairOpts{idle: idle})
	exchangeSmall(t, quiet)

	// The busy pair moves a byte every 50 ms, one way then the other, for
	// three idle periods: it must survive; the quiet one must not.
	start := time.Now()
	buf := make([]byte, 1)
	for i := 0; time.Since(start) < 3*idle; i++ {
		from, to := busy.client, busy.server
		if i%2 == 1 {
			from, to = to, from
		}
		if _, err := from.Write([]byte{'x'}); err != nil {
			t.Fatalf("busy pair write after %v: %v", time.Since(start), err)
		}
		to.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(to, buf); err != nil {
			t.Fatalf("busy pair read after %v: %v", time.Since(start), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case res := <-busy.done:
		t.Fatalf("busy pair closed: %+v", res)
	default:
	}
	res := quiet.wait(t, 5*time.Second)
	if res.Reason != IdleTimeout {
		t.Errorf("quiet pair reason %s, want %s", res.Reason, IdleTimeout)
	}
	if res.Duration < idle {
		t.Errorf("quiet pair closed after %v, before its idle timeout %v", res.Duration, idle)
	}
	// Its sockets are closed: the ends see EOF.
	if _, err := readAllTimeout(quiet.client, 5*time.Second); err != nil {
		t.Errorf("client of the idle pair: %v, want EOF", err)
	}
}

// TestPayloadBypassesUserspace is the proof that spliced payload never
// crosses into the daemon: over a request/response exchange the engine's
// own byte counter stays at zero while the verdict counts every byte.
func TestPayloadBypassesUserspace(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	tp := r.pair(pairOpts{mapping: "TCPMapping default/echo"})
	const rounds, size = 1000, 1024
	req := make([]byte, size)
	resp := make([]byte, size)
	deadline := time.Now().Add(30 * time.Second)
	tp.client.SetDeadline(deadline)
	tp.server.SetDeadline(deadline)
	go func() {
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(tp.server, buf); err != nil {
				return
			}
			if _, err := tp.server.Write(buf); err != nil {
				return
			}
		}
	}()
	for i := range rounds {
		fillStream(req, int64(i*size), 9)
		if _, err := tp.client.Write(req); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(tp.client, resp); err != nil {
			t.Fatal(err)
		}
		if string(resp) != string(req) {
			t.Fatalf("round %d: response differs from request", i)
		}
	}
	infos := e.Conns()
	if len(infos) != 1 {
		t.Fatalf("%d conns, want 1", len(infos))
	}
	ci := infos[0]
	const total = rounds * size
	if got := e.Stats().UserspaceBytes; got != 0 {
		t.Errorf("engine copied %d bytes itself, want 0", got)
	}
	for name, d := range map[string]DirInfo{"client→upstream": ci.ClientToUpstream, "upstream→client": ci.UpstreamToClient} {
		if d.Bytes != total || d.PassedBytes != 0 || d.Mechanism != MechanismSockmap {
			t.Errorf("%s: %+v; want %d bytes, all redirected by sockmap", name, d, total)
		}
		if d.Packets == 0 {
			t.Errorf("%s: no packets counted", name)
		}
	}
	totals, err := e.MappingTotals()
	if err != nil {
		t.Fatal(err)
	}
	if got := totals["TCPMapping default/echo"]; got.Bytes != 2*total || got.PassedBytes != 0 {
		t.Errorf("mapping totals %+v, want %d bytes, none passed", got, 2*total)
	}
	t.Logf("request/response %d × %d B each way: BPF counted %d + %d bytes in %d + %d packets, engine copied %d bytes",
		rounds, size, ci.ClientToUpstream.Bytes, ci.UpstreamToClient.Bytes, ci.ClientToUpstream.Packets,
		ci.UpstreamToClient.Packets, e.Stats().UserspaceBytes)
}

func TestOpenForcedFailure(t *testing.T) {
	privtest.Require(t)
	t.Setenv(datapath.ForceFailEnv, "1")
	e, err := Open(Options{Datapath: datapath.Options{PinDir: privtest.PinDir(t)}})
	if err == nil {
		e.Close()
		t.Fatal("open succeeded with the failure forced")
	}
	if datapath.Why(err) != datapath.ReasonForced {
		t.Fatalf("error %v, want reason %s", err, datapath.ReasonForced)
	}
}

func TestContextAbortsPair(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	tp := r.pair(pairOpts{ctx: ctx})
	exchangeSmall(t, tp)
	cancel()
	if res := tp.wait(t, 5*time.Second); res.Reason != Aborted {
		t.Errorf("reason %s, want %s", res.Reason, Aborted)
	}
}

func TestShutdown(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	tp := r.pair(pairOpts{})
	exchangeSmall(t, tp)

	// A pair that ends on its own lets Shutdown return.
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- e.Shutdown(ctx)
	}()
	time.Sleep(50 * time.Millisecond)
	tp.client.CloseWrite()
	tp.server.CloseWrite()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if res := tp.wait(t, time.Second); res.Reason != Closed {
		t.Errorf("reason %s", res.Reason)
	}
	if err := e.Splice(Pair{Client: tp.client, Upstream: tp.server}); !errors.Is(err, ErrClosed) {
		t.Errorf("splice after shutdown: %v, want ErrClosed", err)
	}
}

func TestShutdownDeadlineAborts(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	tp := r.pair(pairOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := e.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v, want deadline exceeded", err)
	}
	if res := tp.wait(t, time.Second); res.Reason != Aborted {
		t.Errorf("reason %s, want %s", res.Reason, Aborted)
	}
}

// TestIdlePairMemory measures the engine's userspace memory per idle
// spliced pair (its own state, and the two *net.TCPConn it keeps).
func TestIdlePairMemory(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	const n = 1000
	pairs := make([]*testPair, n)
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// Connect everything first, splice afterwards, so that the second
	// delta is the engine's alone.
	conns := make([]*testPair, n)
	hStart := heap()
	for i := range conns {
		tp := &testPair{done: make(chan Result, 1)}
		tp.client = dial(t, r.front.Addr())
		tp.proxyC = accept(t, r.front)
		tp.proxyU = dial(t, r.backend.Addr())
		tp.server = accept(t, r.backend)
		conns[i] = tp
	}
	h0 := heap()
	for i, tp := range conns {
		if err := e.Splice(Pair{Client: tp.proxyC, Upstream: tp.proxyU, Mapping: "m",
			OnDone: func(res Result) { tp.done <- res }}); err != nil {
			t.Fatal(err)
		}
		pairs[i] = tp
	}
	h1 := heap()
	perPair := float64(h1-h0) / n
	perConn := float64(h0-hStart) / (4 * n)
	t.Logf("heap per idle spliced pair: engine %.0f B + two *net.TCPConn kept open %.0f B = %.0f B",
		perPair, 2*perConn, perPair+2*perConn)
	if perPair > 2048 {
		t.Errorf("engine holds %.0f B per idle pair, want at most 2 KiB", perPair)
	}
	for _, tp := range pairs {
		tp.client.Close()
		tp.server.Close()
	}
	for _, tp := range pairs {
		tp.wait(t, 10*time.Second)
	}
}
