package splice

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// exchange sends up bytes client→server and down bytes server→client at
// the same time, half-closing each side when done, and checks both
// streams arrive complete and in order (SHA-256). It returns the pair's
// Result.
func exchange(t *testing.T, tp *testPair, up, down int64, timeout time.Duration) Result {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for _, c := range []interface{ SetDeadline(time.Time) error }{tp.client, tp.server} {
		c.SetDeadline(deadline)
	}
	var wg sync.WaitGroup
	var upSent, downSent, upGot, downGot [32]byte
	var upN, downN int64
	errs := make([]error, 4)
	wg.Add(4)
	go func() { defer wg.Done(); upSent, errs[0] = sendStream(tp.client, up, 1, 256<<10, true) }()
	go func() { defer wg.Done(); downSent, errs[1] = sendStream(tp.server, down, 2, 256<<10, true) }()
	go func() { defer wg.Done(); upN, upGot, errs[2] = recvStream(tp.server, 256<<10, nil) }()
	go func() { defer wg.Done(); downN, downGot, errs[3] = recvStream(tp.client, 256<<10, nil) }()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("exchange: %v", err)
	}
	if upN != up || upGot != upSent {
		t.Errorf("client→server: got %d bytes (want %d), sha256 equal %v", upN, up, upGot == upSent)
	}
	if downN != down || downGot != downSent {
		t.Errorf("server→client: got %d bytes (want %d), sha256 equal %v", downN, down, downGot == downSent)
	}
	return tp.wait(t, time.Until(deadline)+time.Second)
}

func TestTransfer1GiBEachWay(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	tp := r.pair(pairOpts{})
	const n = 1 << 30
	start := time.Now()
	res := exchange(t, tp, n, n, 120*time.Second)
	el := time.Since(start)
	if res.Reason != Closed {
		t.Errorf("reason = %s, want %s", res.Reason, Closed)
	}
	if res.ClientToUpstream.Bytes != n || res.UpstreamToClient.Bytes != n {
		t.Errorf("BPF counted %d and %d bytes, want %d each way", res.ClientToUpstream.Bytes, res.UpstreamToClient.Bytes, n)
	}
	t.Logf("1 GiB each way at once in %v (%.1f Gbit/s each way); kernel-redirected %.0f%% up, %.0f%% down",
		el.Round(time.Millisecond), gbps(n, el),
		100*float64(n-res.ClientToUpstream.PassedBytes)/n, 100*float64(n-res.UpstreamToClient.PassedBytes)/n)
}

func TestHalfClose(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	for _, clientFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("client closes first %v", clientFirst), func(t *testing.T) {
			tp := r.pair(pairOpts{})
			first, second := tp.client, tp.server
			if !clientFirst {
				first, second = second, first
			}
			// The first side sends and half-closes; the second sees the
			// data and EOF, then keeps sending over the still open
			// direction, which must keep working.
			if _, err := first.Write([]byte("request")); err != nil {
				t.Fatal(err)
			}
			first.CloseWrite()
			got, err := readAllTimeout(second, 5*time.Second)
			if err != nil || string(got) != "request" {
				t.Fatalf("after half-close: read %q, %v; want request then EOF", got, err)
			}
			payload := bytes.Repeat([]byte("response "), 100000)
			go func() {
				second.Write(payload)
				second.CloseWrite()
			}()
			got, err = readAllTimeout(first, 10*time.Second)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("half-closed side read %d bytes, %v; want %d then EOF", len(got), err, len(payload))
			}
			res := tp.wait(t, 5*time.Second)
			if res.Reason != Closed {
				t.Errorf("reason %s, want %s", res.Reason, Closed)
			}
		})
	}
}

func TestManyPairsRandomSizesAndCloseOrder(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	const pairs = 500
	rng := rand.New(rand.NewPCG(1, 2))
	type job struct {
		tp       *testPair
		up, down int64
		order    int // 0: client closes first, 1: server first, 2: both at once
	}
	jobs := make([]job, pairs)
	for i := range jobs {
		jobs[i] = job{tp: r.pair(pairOpts{}), up: rng.Int64N(512 << 10), down: rng.Int64N(512 << 10), order: rng.IntN(3)}
	}
	if got := e.Stats().Pairs; got != pairs {
		t.Fatalf("engine holds %d pairs, want %d", got, pairs)
	}
	deadline := time.Now().Add(90 * time.Second)
	var wg sync.WaitGroup
	errc := make(chan error, pairs)
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- runJob(j.tp, j.up, j.down, j.order, deadline, uint64(i))
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}
	for i, j := range jobs {
		select {
		case res := <-j.tp.done:
			if res.Reason != Closed || res.ClientToUpstream.Bytes != uint64(j.up) || res.UpstreamToClient.Bytes != uint64(j.down) {
				t.Errorf("pair %d: result %+v, want closed with %d/%d bytes", i, res, j.up, j.down)
			}
		case <-time.After(max(time.Until(deadline), 5*time.Second)): // never already expired: a ready result must win
			t.Fatalf("pair %d not closed in time", i)
		}
	}
	if got := e.Stats().Pairs; got != 0 {
		t.Errorf("engine still holds %d pairs", got)
	}
	if dirs, _ := e.Datapath().DumpDirs(); len(dirs) != 0 {
		t.Errorf("%d dirs entries left after every pair closed", len(dirs))
	}
	if socks, _ := e.Datapath().DumpSockets(); len(socks) != 0 {
		t.Errorf("%d sockets left in sock_hash", len(socks))
	}
}

// runJob moves up and down bytes, half-closing in the given order, and
// checks what arrived.
func runJob(tp *testPair, up, down int64, order int, deadline time.Time, seed uint64) error {
	tp.client.SetDeadline(deadline)
	tp.server.SetDeadline(deadline)
	type res struct {
		n   int64
		sum [32]byte
		err error
	}
	upc, downc := make(chan res, 1), make(chan res, 1)
	go func() { n, s, err := recvStream(tp.server, 64<<10, nil); upc <- res{n, s, err} }()
	go func() { n, s, err := recvStream(tp.client, 64<<10, nil); downc <- res{n, s, err} }()
	var upSum, downSum [32]byte
	var upErr, downErr error
	switch order {
	case 0:
		upSum, upErr = sendStream(tp.client, up, seed, 32<<10, true)
		downSum, downErr = sendStream(tp.server, down, seed+1, 32<<10, true)
	case 1:
		downSum, downErr = sendStream(tp.server, down, seed+1, 32<<10, true)
		upSum, upErr = sendStream(tp.client, up, seed, 32<<10, true)
	default:
		done := make(chan struct{})
		go func() { downSum, downErr = sendStream(tp.server, down, seed+1, 32<<10, true); close(done) }()
		upSum, upErr = sendStream(tp.client, up, seed, 32<<10, true)
		<-done
	}
	u, d := <-upc, <-downc
	if err := errors.Join(upErr, downErr, u.err, d.err); err != nil {
		return err
	}
	if u.n != up || u.sum != upSum || d.n != down || d.sum != downSum {
		return fmt.Errorf("pair %d: up %d/%d bytes (sha ok %v), down %d/%d (sha ok %v)", seed, u.n, up, u.sum == upSum, d.n, down, d.sum == downSum)
	}
	return nil
}

func TestServerSpeaksFirst(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	banner := []byte("220 upstream ready\r\n")
	tp := r.pair(pairOpts{beforeSplice: func(tp *testPair) {
		// The banner reaches the proxy's upstream socket before the
		// hand-off and waits in its receive queue.
		if _, err := tp.server.Write(banner); err != nil {
			t.Fatal(err)
		}
		waitQueued(t, tp.proxyU, len(banner))
	}})
	got := make([]byte, len(banner))
	tp.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(tp.client, got); err != nil || !bytes.Equal(got, banner) {
		t.Fatalf("client got %q, %v; want the banner", got, err)
	}
	exchange(t, tp, 1<<20, 1<<20, 30*time.Second)
}

// waitQueued waits until c's receive queue holds n bytes.
func waitQueued(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		var inq int
		raw.Control(func(fd uintptr) { inq, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if inq >= n {
			return
		}
	}
	t.Fatalf("%d bytes never arrived in the receive queue", n)
}

func TestEarlyClientBytes(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	prefix := []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\nGET / HTTP/1.0\r\n")
	early := bytes.Repeat([]byte("early bytes queued before the hand-off "), 2000)
	tp := r.pair(pairOpts{beforeSplice: func(tp *testPair) {
		// The client sends before the upstream side is even spliced: the
		// "relay" reads the first part itself (as it would a PROXY header
		// plus whatever came with it) and forwards it, the rest stays
		// queued on the proxy's client socket.
		if _, err := tp.client.Write(append(append([]byte{}, prefix...), early...)); err != nil {
			t.Fatal(err)
		}
		waitQueued(t, tp.proxyC, len(prefix)+len(early))
		got := make([]byte, len(prefix))
		tp.proxyC.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(tp.proxyC, got); err != nil {
			t.Fatal(err)
		}
		if _, err := tp.proxyU.Write(got); err != nil {
			t.Fatal(err)
		}
	}})
	tail := []byte("and bytes sent after it")
	tp.client.Write(tail)
	tp.client.CloseWrite()
	got, err := readAllTimeout(tp.server, 10*time.Second)
	want := bytes.Join([][]byte{prefix, early, tail}, nil)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("server got %d bytes (%v), want %d in order", len(got), err, len(want))
	}
	tp.server.CloseWrite()
	if _, err := readAllTimeout(tp.client, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	res := tp.wait(t, 5*time.Second)
	// The FIN rule counted the bytes read before the hand-off out
	// (otherwise it would wait for them forever); Result counts what the
	// engine moved: the queued bytes it forwarded plus the tail.
	if res.Reason != Closed || res.ClientToUpstream.Bytes != uint64(len(early)+len(tail)) {
		t.Errorf("result %+v; want closed with %d bytes moved by the engine", res, len(early)+len(tail))
	}
}

func TestZeroLengthFIN(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	t.Run("FIN with no data after hand-off", func(t *testing.T) {
		tp := r.pair(pairOpts{})
		tp.client.CloseWrite()
		if got, err := readAllTimeout(tp.server, 5*time.Second); err != nil || len(got) != 0 {
			t.Fatalf("server read %q, %v; want EOF", got, err)
		}
		tp.server.Write([]byte("bye"))
		tp.server.CloseWrite()
		if got, err := readAllTimeout(tp.client, 5*time.Second); err != nil || string(got) != "bye" {
			t.Fatalf("client read %q, %v", got, err)
		}
		if res := tp.wait(t, 5*time.Second); res.Reason != Closed {
			t.Errorf("reason %s", res.Reason)
		}
	})
	t.Run("FIN before hand-off is refused and the connections stay usable", func(t *testing.T) {
		tp := &testPair{}
		tp.client = dial(t, r.front.Addr())
		tp.proxyC = accept(t, r.front)
		tp.proxyU = dial(t, r.backend.Addr())
		tp.server = accept(t, r.backend)
		defer func() {
			for _, c := range []interface{ Close() error }{tp.client, tp.proxyC, tp.proxyU, tp.server} {
				c.Close()
			}
		}()
		tp.client.Write([]byte("x"))
		tp.client.CloseWrite()
		waitRDHUP(t, tp.proxyC)
		err := e.Splice(Pair{Client: tp.proxyC, Upstream: tp.proxyU, Mapping: "m"})
		if err == nil {
			t.Fatal("splice of a half-closed client succeeded, want an error")
		}
		if e.Stats().Pairs != 0 {
			t.Errorf("failed splice left %d pairs", e.Stats().Pairs)
		}
		// The caller relays in userspace: the byte and the EOF are intact.
		got, rerr := readAllTimeout(tp.proxyC, 5*time.Second)
		if rerr != nil || string(got) != "x" {
			t.Errorf("after the failed splice, proxy read %q, %v; want x then EOF", got, rerr)
		}
	})
}

// waitRDHUP waits until c has received FIN.
func waitRDHUP(t *testing.T, c *net.TCPConn) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	raw.Control(func(fd uintptr) {
		n, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}, 5000)
	})
	if n != 1 {
		t.Fatal("FIN never arrived")
	}
}
