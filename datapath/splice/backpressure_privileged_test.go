package splice

import (
	"testing"
	"time"
)

// TestSlowReaderBounded: a client sending as fast as it can to a server
// that reads 64 KiB every 20 ms. The proxy's kernel memory (gap on the
// psock queue + its two sockets' queues) must stay within the bound, the
// gap itself within the verdict's gap bound, and after the server speeds
// up every byte must arrive intact.
func TestSlowReaderBounded(t *testing.T) {
	const bound = 4 << 20
	e := openEngine(t, Options{Bound: bound})
	r := newRig(t, e)
	tp := r.pair(pairOpts{})
	const total = 96 << 20

	type sent struct {
		sum [32]byte
		err error
	}
	sentc := make(chan sent, 1)
	go func() {
		s, err := sendStream(tp.client, total, 7, 256<<10, true)
		sentc <- sent{s, err}
	}()
	slowUntil := time.Now().Add(3 * time.Second)
	type recvd struct {
		n   int64
		sum [32]byte
		err error
	}
	recvc := make(chan recvd, 1)
	tp.server.SetReadDeadline(time.Now().Add(60 * time.Second))
	go func() {
		n, s, err := recvStream(tp.server, 64<<10, func() {
			if time.Now().Before(slowUntil) {
				time.Sleep(20 * time.Millisecond)
			}
		})
		recvc <- recvd{n, s, err}
	}()

	base := sockstatTCPMem(t)
	var maxProxy, maxSockstat, maxGap int64
	var at skmem
	for time.Now().Before(slowUntil.Add(-100 * time.Millisecond)) {
		time.Sleep(100 * time.Millisecond)
		d, err := e.Datapath().Dir(mustCookie(t, e, tp))
		if err != nil {
			t.Fatal(err)
		}
		a := ssMem(t, tp.proxyC.LocalAddr(), tp.proxyC.RemoteAddr())
		b := ssMem(t, tp.proxyU.LocalAddr(), tp.proxyU.RemoteAddr())
		proxy := a.held() + b.held() + int64(d.LastGap)
		if proxy > maxProxy {
			maxProxy, at = proxy, skmem{r: a.r, rb: a.rb, w: b.w, tb: b.tb, t: int64(d.LastGap)}
		}
		maxGap = max(maxGap, int64(d.MaxGap))
		maxSockstat = max(maxSockstat, sockstatTCPMem(t)-base)
	}
	t.Logf("slow reader, bound %s: proxy kernel memory max %s (client socket rmem %s of rcvbuf %s, upstream socket wmem_queued %s of sndbuf %s, gap %s); BPF max gap %s; sockstat TCP mem delta max %s (all four sockets)",
		fmtMiB(bound), fmtMiB(maxProxy), fmtMiB(at.r), fmtMiB(at.rb), fmtMiB(at.w), fmtMiB(at.tb), fmtMiB(at.t),
		fmtMiB(maxGap), fmtMiB(maxSockstat))
	if maxGap > int64(e.opts.Gap) {
		t.Errorf("BPF gap reached %d, above the gap bound %d", maxGap, e.opts.Gap)
	}
	if maxProxy > bound {
		t.Errorf("proxy kernel memory reached %s, above the bound %s", fmtMiB(maxProxy), fmtMiB(bound))
	}
	s := <-sentc
	if s.err != nil {
		t.Fatalf("send: %v", s.err)
	}
	got := <-recvc
	if got.err != nil || got.n != total || got.sum != s.sum {
		t.Fatalf("received %d bytes (want %d), sha256 match %v, err %v", got.n, int64(total), got.sum == s.sum, got.err)
	}
	tp.server.CloseWrite()
	res := tp.wait(t, 10*time.Second)
	t.Logf("result: %+v", res)
}

func mustCookie(t *testing.T, e *Engine, tp *testPair) uint64 {
	t.Helper()
	for _, ci := range e.Conns() {
		if ci.Client.String() == tp.proxyC.RemoteAddr().String() {
			return ci.ClientCookie
		}
	}
	t.Fatal("pair not found in Conns")
	return 0
}

// TestPassAndResumeKeepOrder alternates a slow and a fast reader so that
// the direction goes back and forth between the kernel and userspace many
// times; every byte must arrive once and in order, and the direction must
// end up back in the kernel more than once.
func TestPassAndResumeKeepOrder(t *testing.T) {
	e := openEngine(t, Options{Resume: true})
	r := newRig(t, e)
	tp := r.pair(pairOpts{})
	const total = 512 << 20
	deadline := time.Now().Add(90 * time.Second)
	tp.client.SetDeadline(deadline)
	tp.server.SetDeadline(deadline)
	sentc := make(chan [32]byte, 1)
	errc := make(chan error, 1)
	go func() {
		s, err := sendStream(tp.client, total, 11, 128<<10, true)
		errc <- err
		sentc <- s
	}()
	start := time.Now()
	n, got, err := recvStream(tp.server, 64<<10, func() {
		// 200 ms slow (64 KiB per 5 ms), 200 ms fast.
		if (time.Since(start)/(200*time.Millisecond))%2 == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if sent := <-sentc; n != total || got != sent {
		t.Fatalf("received %d bytes (want %d), sha256 equal %v", n, int64(total), got == sent)
	}
	tp.server.CloseWrite()
	res := tp.wait(t, 10*time.Second)
	ci := res.ClientToUpstream
	t.Logf("%d bytes: %d redirected in the kernel, %d through userspace", ci.Bytes, ci.Bytes-ci.PassedBytes, ci.PassedBytes)
	if ci.PassedBytes == 0 || ci.PassedBytes == ci.Bytes {
		t.Errorf("passed %d of %d bytes: the run never switched between kernel and userspace", ci.PassedBytes, ci.Bytes)
	}
}
