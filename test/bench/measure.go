package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dial connects with the context's deadline and closes the connection
// when the context ends, so no socket outlives a measurement.
func dial(ctx context.Context, addr string) (net.Conn, func(), error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return c, func() { stop(); c.Close() }, nil
}

// cpuSample is what a bulk window reads before and after.
type cpuSample struct {
	at      time.Time
	bytes   int64
	procCPU float64 // seconds; 0 when there is no proxy process
	machine float64 // seconds
}

func takeSample(pid int, bytes int64) (cpuSample, error) {
	s := cpuSample{at: time.Now(), bytes: bytes}
	var err error
	if pid != 0 {
		if s.procCPU, err = procCPUSeconds(pid); err != nil {
			return s, err
		}
	}
	s.machine, err = machineBusySeconds()
	return s, err
}

// bulkResult is one bulk throughput window.
type bulkResult struct {
	bytes   int64
	seconds float64
	procCPU float64
	machine float64
}

func (r bulkResult) gbps() float64 { return float64(r.bytes) * 8 / r.seconds / 1e9 }

// bulk runs streams connections that each write 256 KiB buffers as fast as
// they can into the discarding sink; after warm-up it counts the bytes the
// sink read during dur, and the CPU the proxy and the machine spent then.
func bulk(ctx context.Context, up *upstream, addr string, pid, streams int, warm, dur time.Duration) (bulkResult, error) {
	var conns []net.Conn
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for range streams {
		c, cl, err := dial(ctx, addr)
		if err != nil {
			return bulkResult{}, fmt.Errorf("dial sink: %w", err)
		}
		conns = append(conns, c)
		closers = append(closers, cl)
	}
	var stopping atomic.Bool
	errc := make(chan error, streams)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bulkBufSize)
			for {
				if _, err := c.Write(buf); err != nil {
					if !stopping.Load() {
						errc <- err
					}
					return
				}
			}
		}()
	}
	stop := func() {
		stopping.Store(true)
		for _, c := range closers {
			c()
		}
		wg.Wait()
	}
	defer stop()

	if err := sleepCtx(ctx, warm); err != nil {
		return bulkResult{}, err
	}
	s0, err := takeSample(pid, up.sinkBytes.Load())
	if err != nil {
		return bulkResult{}, err
	}
	select {
	case <-time.After(dur):
	case <-ctx.Done():
		return bulkResult{}, ctx.Err()
	case err := <-errc:
		return bulkResult{}, fmt.Errorf("write: %w", err)
	}
	s1, err := takeSample(pid, up.sinkBytes.Load())
	if err != nil {
		return bulkResult{}, err
	}
	stop()
	r := bulkResult{
		bytes:   s1.bytes - s0.bytes,
		seconds: s1.at.Sub(s0.at).Seconds(),
		procCPU: s1.procCPU - s0.procCPU,
		machine: s1.machine - s0.machine,
	}
	if r.bytes <= 0 {
		return r, errors.New("the sink received nothing")
	}
	return r, nil
}

// latency does warm plus n ping-pongs of 64 bytes on one connection through
// the echo service and returns p50 and p99 in microseconds.
func latency(ctx context.Context, addr string, warm, n int) (p50, p99 float64, err error) {
	c, closeConn, err := dial(ctx, addr)
	if err != nil {
		return 0, 0, fmt.Errorf("dial echo: %w", err)
	}
	defer closeConn()
	msg := make([]byte, msgSize)
	for i := range msg {
		msg[i] = byte(i)
	}
	got := make([]byte, msgSize)
	rtts := make([]time.Duration, 0, n)
	for i := range warm + n {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, fmt.Errorf("round trip %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return 0, 0, fmt.Errorf("round trip %d: %w", i, err)
		}
		if i >= warm {
			rtts = append(rtts, time.Since(t0))
		}
	}
	slices.Sort(rtts)
	pct := func(p int) float64 { return float64(rtts[(len(rtts)-1)*p/100]) / float64(time.Microsecond) }
	return pct(50), pct(99), nil
}

// connRate runs workers loops of connect, 64 bytes each way, close, against
// the conn service, and returns the connections completed per second during
// dur after warm-up, how many attempts failed then, and the first failure.
// A proxy that fails every attempt measures 0, not an error.
func connRate(ctx context.Context, addr string, workers int, warm, dur time.Duration) (perSec float64, failed int64, firstFailure, err error) {
	var ok, bad atomic.Int64
	var firstErr atomic.Pointer[error]
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, msgSize)
			got := make([]byte, msgSize)
			for wctx.Err() == nil {
				if err := oneConn(wctx, addr, msg, got); err != nil {
					if wctx.Err() == nil {
						bad.Add(1)
						firstErr.CompareAndSwap(nil, &err)
					}
					continue
				}
				ok.Add(1)
			}
		}()
	}
	defer wg.Wait()
	defer cancel()
	if err := sleepCtx(ctx, warm); err != nil {
		return 0, 0, nil, err
	}
	n0, b0, t0 := ok.Load(), bad.Load(), time.Now()
	if err := sleepCtx(ctx, dur); err != nil {
		return 0, 0, nil, err
	}
	n1, b1, t1 := ok.Load(), bad.Load(), time.Now()
	cancel()
	if e := firstErr.Load(); e != nil {
		firstFailure = *e
	}
	if n1-n0 == 0 && b1-b0 == 0 {
		return 0, 0, firstFailure, errors.New("no connection attempt finished in the window")
	}
	return float64(n1-n0) / t1.Sub(t0).Seconds(), b1 - b0, firstFailure, nil
}

func oneConn(ctx context.Context, addr string, msg, got []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, closeConn, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	defer closeConn()
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err = io.ReadFull(c, got)
	return err
}

// idleResult is the idle test's outcome.
type idleResult struct {
	kibPerConn float64 // growth of the proxy's VmRSS per connection
	conns      int     // idle connections held through the proxy
	fdsPerConn float64 // descriptors the proxy opened per connection
	noFile     int     // the proxy's RLIMIT_NOFILE (soft)
}

// idleRSS opens up to n idle connections through the proxy, waits until the
// upstream holds them all, and returns the growth of the proxy's RSS per
// connection. A first batch measures how many descriptors the proxy spends
// per connection, and the test opens no more than its RLIMIT_NOFILE allows:
// a proxy out of descriptors stops accepting, and the test would measure
// that instead.
func idleRSS(ctx context.Context, up *upstream, addr string, pid, n int, settle time.Duration) (res idleResult, err error) {
	defer func() {
		if cerr := up.closeService(svcIdle); cerr != nil && err == nil {
			err = cerr
		}
	}()
	before, err := procRSSKiB(pid)
	if err != nil {
		return res, err
	}
	fd0, err := countFDs(pid)
	if err != nil {
		return res, err
	}
	held0, err := up.idle.count()
	if err != nil {
		return res, err
	}

	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func(k int) error {
		const parallel = 16
		var next atomic.Int64
		var firstErr atomic.Pointer[error]
		var wg sync.WaitGroup
		d := net.Dialer{Timeout: 5 * time.Second}
		for range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(k) && ctx.Err() == nil && firstErr.Load() == nil {
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						err = fmt.Errorf("idle connection %d: %w", len(conns)+1, err)
						firstErr.CompareAndSwap(nil, &err)
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if e := firstErr.Load(); e != nil {
			return *e
		}
		return ctx.Err()
	}
	// waitHeld gives up when the count stops growing for 10 s: a proxy that
	// cannot reach the upstream should cost seconds, not the test's timeout.
	waitHeld := func(want int) error {
		last, since := int64(-1), time.Now()
		for {
			held, err := up.idle.count()
			if err != nil {
				return err
			}
			if held-held0 >= int64(want) {
				return nil
			}
			if held != last {
				last, since = held, time.Now()
			}
			if time.Since(since) > 10*time.Second {
				return fmt.Errorf("upstream holds %d of %d idle connections and no more arrived for 10 s", held-held0, want)
			}
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return fmt.Errorf("upstream holds %d of %d idle connections: %w", held-held0, want, err)
			}
		}
	}

	batch := min(n, 200)
	if err := open(batch); err != nil {
		return res, err
	}
	if err := waitHeld(batch); err != nil {
		return res, err
	}
	fd1, err := countFDs(pid)
	if err != nil {
		return res, err
	}
	res.noFile = procNoFile(pid)
	if per := float64(fd1-fd0) / float64(batch); per > 0 && res.noFile > 0 {
		fit := batch + int(float64(res.noFile-fd1-64)/per)
		n = max(batch, min(n, fit))
	}
	if err := open(n - batch); err != nil {
		return res, err
	}
	if err := waitHeld(n); err != nil {
		return res, err
	}
	if err := sleepCtx(ctx, settle); err != nil {
		return res, err
	}
	after, err := procRSSKiB(pid)
	if err != nil {
		return res, err
	}
	fd2, err := countFDs(pid)
	if err != nil {
		return res, err
	}
	res.conns = n
	res.kibPerConn = (after - before) / float64(n)
	res.fdsPerConn = float64(fd2-fd0) / float64(n)
	return res, nil
}

// slowResult is the slow-reader test's outcome.
type slowResult struct {
	kernelMiB  float64 // peak growth of TCP memory, /proc/net/sockstat
	queuedMiB  float64 // peak bytes queued in the involved sockets, ss -tm; -1 without ss
	writtenMiB float64 // bytes the fast writer got into the kernel
	readMiB    float64 // bytes the slow reader read
}

// slowReader has one fast writer send into the slow service (64 KiB read
// every 20 ms) for dur while it samples the machine's TCP memory and the
// sockets on the test's ports; a proxy that keeps TCP flow control working
// stops the writer instead of queueing what it sends.
func slowReader(ctx context.Context, up *upstream, addr, upAddr string, dur time.Duration) (slowResult, error) {
	defer func() { _ = up.closeService(svcSlow) }()
	page := float64(os.Getpagesize())
	base, err := settledTCPMem(ctx)
	if err != nil {
		return slowResult{}, err
	}
	ports := []int{portOf(addr)}
	if p := portOf(upAddr); p != ports[0] {
		ports = append(ports, p)
	}
	read0 := up.slowBytes.Load()

	c, closeConn, err := dial(ctx, addr)
	if err != nil {
		return slowResult{}, fmt.Errorf("dial slow reader: %w", err)
	}
	var written atomic.Int64
	var stopping atomic.Bool
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, bulkBufSize)
		for {
			n, err := c.Write(buf)
			written.Add(int64(n))
			if err != nil {
				if !stopping.Load() {
					errc <- err
				}
				return
			}
		}
	}()
	stop := func() {
		stopping.Store(true)
		closeConn()
		<-done
	}
	defer stop()

	r := slowResult{queuedMiB: -1}
	peakPages := base
	var peakQueued int64
	haveSS := true
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		if p, err := tcpMemPages(); err == nil && p > peakPages {
			peakPages = p
		}
		if haveSS {
			q, ok, err := socketQueuedBytes(ctx, ports...)
			switch {
			case !ok:
				haveSS = false
			case err == nil && q > peakQueued:
				peakQueued = q
			}
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return r, ctx.Err()
		case err := <-errc:
			return r, fmt.Errorf("write: %w", err)
		}
	}
	r.kernelMiB = float64(peakPages-base) * page / (1 << 20)
	if haveSS {
		r.queuedMiB = float64(peakQueued) / (1 << 20)
	}
	r.writtenMiB = float64(written.Load()) / (1 << 20)
	r.readMiB = float64(up.slowBytes.Load()-read0) / (1 << 20)
	return r, nil
}

// settledTCPMem waits (up to 2 s) until the machine's TCP memory stops
// falling or rising by more than 256 KiB per 100 ms, so that memory the
// previous test's sockets are still returning does not hide this test's
// growth, and returns it.
func settledTCPMem(ctx context.Context) (int64, error) {
	prev, err := tcpMemPages()
	if err != nil {
		return 0, err
	}
	slack := int64(256<<10) / int64(os.Getpagesize())
	for range 20 {
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return 0, err
		}
		cur, err := tcpMemPages()
		if err != nil {
			return 0, err
		}
		if d := cur - prev; d <= slack && d >= -slack {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

func portOf(addr string) int {
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return 0
	}
	return a.Port
}
