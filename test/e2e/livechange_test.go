package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Live changes (issue 5, first e2e bullet): while 50 streams run through
// mapping A, mapping B is added through tcpmapctl, mapping C's file is
// removed, A's file is edited to change its canary weights, and SIGHUP is
// sent. Every A stream must end with SHA-256-equal bytes both ways.

const (
	// liveStreams is how many streams run through mapping A.
	liveStreams = 50
	// liveBytes is what each stream carries each way: half before the
	// changes, half after.
	liveBytes = 16 << 20
	// liveChunk and livePause pace every sender, so that the streams carry
	// data while the changes happen instead of finishing first: about
	// 1.6 MiB/s per stream and direction, 5 s a half.
	liveChunk = 64 << 10
	livePause = 40 * time.Millisecond
	// liveDrain is the daemon's --drain-timeout.
	liveDrain = 5 * time.Second
	// liveProbes is how many short connections measure A's split.
	liveProbes = 400
)

// gatedWriter writes to w in paced chunks and, once gateAt bytes are
// written, waits for gate to close before writing more. The gate makes each
// stream span the changes without depending on how long they take.
type gatedWriter struct {
	ctx     context.Context
	w       io.Writer
	gate    <-chan struct{}
	gateAt  int64
	written int64
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if g.written == g.gateAt {
			select {
			case <-g.gate:
			case <-g.ctx.Done():
				return n, fmt.Errorf("waiting for the changes: %w", g.ctx.Err())
			}
		}
		k := min(len(p), liveChunk)
		if g.written < g.gateAt {
			k = int(min(int64(k), g.gateAt-g.written))
		}
		m, err := g.w.Write(p[:k])
		n += m
		g.written += int64(m)
		if err != nil {
			return n, err
		}
		p = p[k:]
		select {
		case <-time.After(livePause):
		case <-g.ctx.Done():
			return n, g.ctx.Err()
		}
	}
	return n, nil
}

// gatedExchange is exchange with the sender behind a gatedWriter.
func gatedExchange(ctx context.Context, c net.Conn, gate <-chan struct{}, seed uint64, n int64) bulkResult {
	sent := make(chan bulkResult, 1)
	go func() {
		h, err := sendStream(&gatedWriter{ctx: ctx, w: c, gate: gate, gateAt: n / 2}, seed, n)
		sent <- bulkResult{sent: h, err: err}
	}()
	var r bulkResult
	r.received, r.err = recvStream(c, n)
	if r.err != nil {
		c.Close() // unblock the writer
	}
	s := <-sent
	r.sent = s.sent
	if r.err == nil {
		r.err = s.err
	}
	return r
}

// liveUpstreamResult is the upstream end of one A stream.
type liveUpstreamResult struct {
	index    uint64
	upstream string
	bulkResult
}

// TestLiveChangesKeepStreams: while 50 connections stream 16 MiB each way
// through mapping A (a 50/50 canary pair) and one connection runs through
// mapping C, mapping B is added with tcpmapctl, C's file is removed (the
// watcher reloads), A's file is edited to 80/20 and SIGHUP sent. B serves,
// C refuses new connections while its live one keeps working until the
// drain timeout closes it, new A connections follow the new weights, and
// every A stream finishes with SHA-256-equal bytes both ways.
func TestLiveChangesKeepStreams(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 55*time.Second)

	// gate is closed once every change is made and checked; each stream
	// sends its second half only then.
	gate := make(chan struct{})
	openGate := sync.OnceFunc(func() { close(gate) })
	// Deferred in this order, they run as: close the connections, open the
	// gate, wait for the client ends; on failure too, so that nothing waits
	// for the deadline or outlives the test.
	var streams sync.WaitGroup
	defer streams.Wait()
	defer openGate()

	// Both A upstreams greet (so probes can count them), read the stream's
	// index, then exchange liveBytes each way.
	upResults := make(chan liveUpstreamResult, 2*liveStreams)
	upAccepted := make(chan struct{}, 2*liveStreams)
	for _, host := range []string{"upstream", "upstream-host"} {
		tp.serveFunc(t, host, 7000, false, func(c net.Conn, _ *tls.ConnectionState) {
			if d, ok := ctx.Deadline(); ok {
				_ = c.SetDeadline(d)
			}
			if _, err := io.WriteString(c, formatGreeting(host, 7000, nil)); err != nil {
				return
			}
			var hdr [8]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return // a probe, which only reads the greeting
			}
			upAccepted <- struct{}{}
			i := binary.BigEndian.Uint64(hdr[:])
			upResults <- liveUpstreamResult{index: i, upstream: host,
				bulkResult: gatedExchange(ctx, c, gate, 2000+i, liveBytes)}
		})
	}
	tp.serveEcho(t, "cockroach", 7001, false) // B
	tp.serveEcho(t, "cockroach", 7002, false) // C

	dir := configDir(t, []string{"livechange/a.yaml", "livechange/c.yaml"}, nil)
	work := t.TempDir()
	socket, stateDir := filepath.Join(work, "tcpmapd.sock"), filepath.Join(work, "state")
	d := tp.start(t, daemonArgs([]string{dir}, "--admin-socket", socket, "--state-dir", stateDir,
		"--watch=true", "--drain-timeout", liveDrain.String())...)

	if c, err := tp.connect(ctx, proxyAddr(7001)); err == nil {
		c.Close()
		t.Fatal("port 7001 accepts before mapping B is added")
	}

	// The live connection through C.
	cLive, err := tp.connect(ctx, proxyAddr(7002))
	if err != nil {
		t.Fatalf("connect to C: %v", err)
	}
	defer cLive.Close()
	if g, err := roundTrip(cLive); err != nil {
		t.Fatalf("live connection through C: %v", err)
	} else {
		checkGreeting(t, "C", g, want{upstream: "cockroach", port: 7002})
	}

	// The 50 streams through A.
	type clientResult struct {
		upstream string
		bulkResult
	}
	clientResults := make([]clientResult, liveStreams)
	for i := range liveStreams {
		c, err := tp.connect(ctx, proxyAddr(7000))
		if err != nil {
			t.Fatalf("stream %d: connect to A: %v", i, err)
		}
		defer c.Close()
		streams.Add(1)
		go func() {
			defer streams.Done()
			line, err := readLine(c)
			if err != nil {
				clientResults[i].err = fmt.Errorf("read greeting (got %q): %w", line, err)
				c.Close()
				return
			}
			g, err := parseGreeting(line)
			if err != nil {
				clientResults[i].err = err
				c.Close()
				return
			}
			clientResults[i].upstream = g.Upstream
			var hdr [8]byte
			binary.BigEndian.PutUint64(hdr[:], uint64(i))
			if _, err := c.Write(hdr[:]); err != nil {
				clientResults[i].err = fmt.Errorf("write index: %w", err)
				c.Close()
				return
			}
			clientResults[i].bulkResult = gatedExchange(ctx, c, gate, 1000+uint64(i), liveBytes)
		}()
	}
	// Every stream has reached its upstream before the first change.
	for i := range liveStreams {
		select {
		case <-upAccepted:
		case <-ctx.Done():
			t.Fatalf("%d of %d streams reached an upstream", i, liveStreams)
		}
	}
	changesStart := time.Now()

	// The split before the change: 50/50.
	checkSplit(t, ctx, tp, "before the edit", map[string]float64{"upstream": 50, "upstream-host": 50})

	// Add B through the admin API.
	if out, errOut, code := ctl(t, socket, "add", "b", "--port", "7001", "--service", hostIP(t, "cockroach")+":7001"); code != 0 {
		t.Fatalf("tcpmapctl add b: exit %d\n%s%s", code, out, errOut)
	}
	g, err := poll(ctx, 10*time.Second, func(ctx context.Context) (greeting, error) { return tp.reach(ctx, proxyAddr(7001)) })
	if err != nil {
		t.Fatalf("mapping B does not serve: %v", err)
	}
	checkGreeting(t, "B", g, want{upstream: "cockroach", port: 7001})

	// Remove C's file; the watcher reloads and C stops accepting.
	if err := os.Remove(filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := poll(ctx, 15*time.Second, func(ctx context.Context) (struct{}, error) {
		c, err := tp.connect(ctx, proxyAddr(7002))
		if err == nil {
			c.Close()
			return struct{}{}, errors.New("port 7002 still accepts")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return struct{}{}, err
		}
		return struct{}{}, nil
	}); err != nil {
		t.Fatalf("after removing c.yaml: %v", err)
	}
	refused := time.Now()
	// C's live connection drains: it keeps working now, and the drain
	// timeout closes it.
	if err := echo(cLive); err != nil {
		t.Fatalf("live connection of the removed mapping C right after it stopped accepting: %v", err)
	}
	type cEnd struct {
		err   error
		after time.Duration // since C refused
	}
	cClosed := make(chan cEnd, 1)
	go func() {
		for {
			if err := echo(cLive); err != nil {
				cClosed <- cEnd{err, time.Since(refused)}
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	// Edit A's file (80/20) and send SIGHUP.
	edited, err := os.ReadFile("testdata/livechange/edited/a.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), edited, 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	hctx, hcancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = d.waitLog(hctx, `"reloaded on SIGHUP"`, func(e logEntry) bool { return e.str("msg") == "reloaded on SIGHUP" })
	hcancel()
	if err != nil {
		t.Fatal(err)
	}
	checkSplit(t, ctx, tp, "after the edit", map[string]float64{"upstream": 80, "upstream-host": 20})
	if g, err := tp.reach(ctx, proxyAddr(7001)); err != nil {
		t.Errorf("B after the edit and SIGHUP: %v", err)
	} else {
		checkGreeting(t, "B after SIGHUP", g, want{upstream: "cockroach", port: 7001})
	}
	if c, err := tp.connect(ctx, proxyAddr(7002)); err == nil {
		c.Close()
		t.Error("C accepts again after the edit and SIGHUP")
	}
	t.Logf("changes made and checked in %v", time.Since(changesStart).Round(time.Millisecond))

	// The second half of every stream.
	openGate()
	streamsDone := make(chan struct{})
	go func() { streams.Wait(); close(streamsDone) }()
	select {
	case <-streamsDone:
	case <-ctx.Done():
		t.Fatal("A streams did not finish")
	}
	ups := make(map[uint64]liveUpstreamResult, liveStreams)
	for len(ups) < liveStreams {
		select {
		case r := <-upResults:
			ups[r.index] = r
		case <-ctx.Done():
			t.Fatalf("%d of %d upstream ends finished", len(ups), liveStreams)
		}
	}
	perUpstream := map[string]int{}
	for i, c := range clientResults {
		u, ok := ups[uint64(i)]
		switch {
		case c.err != nil:
			t.Errorf("stream %d, client end: %v", i, c.err)
		case !ok:
			t.Errorf("stream %d: no upstream end", i)
		case u.err != nil:
			t.Errorf("stream %d, upstream end (%s): %v", i, u.upstream, u.err)
		case c.upstream != u.upstream:
			t.Errorf("stream %d: greeted by %s, carried by %s", i, c.upstream, u.upstream)
		default:
			perUpstream[u.upstream]++
			if !bytes.Equal(c.sent, u.received) {
				t.Errorf("stream %d client→%s: sent sha256 %x, received %x", i, u.upstream, c.sent, u.received)
			}
			if !bytes.Equal(u.sent, c.received) {
				t.Errorf("stream %d %s→client: sent sha256 %x, received %x", i, u.upstream, u.sent, c.received)
			}
		}
	}
	// At 50/50 all 50 streams on one side has odds of 2^-49.
	if perUpstream["upstream"] == 0 || perUpstream["upstream-host"] == 0 {
		t.Errorf("streams per upstream %v: want both members of the pair", perUpstream)
	}
	t.Logf("%d streams of %d MiB each way (%v), all in %v", liveStreams, liveBytes>>20, perUpstream,
		time.Since(changesStart).Round(time.Millisecond))

	// C's live connection is closed by the drain timeout.
	// The bound is generous: the drain timeout plus 10 s. The streams
	// above often outlast that bound, so the end may have been reported
	// long ago: look for it before the deadline can win the select.
	var end *cEnd
	select {
	case e := <-cClosed:
		end = &e
	case <-time.After(time.Until(refused.Add(liveDrain + 10*time.Second))):
		select {
		case e := <-cClosed:
			end = &e
		default:
		}
	}
	switch {
	case end == nil:
		t.Errorf("C's live connection still open %v after C refused; drain timeout %v", time.Since(refused).Round(time.Millisecond), liveDrain)
	case errors.Is(end.err, os.ErrDeadlineExceeded) || end.after > liveDrain+10*time.Second:
		t.Errorf("C's live connection was not closed by the drain timeout (%v): ended %v after C refused: %v",
			liveDrain, end.after.Round(time.Millisecond), end.err)
	default:
		t.Logf("C's live connection ended %v after C refused: %v", end.after.Round(time.Millisecond), end.err)
	}

	// The logs agree: A's listener was updated in place, never removed;
	// C's was removed.
	var aUpdated, aRemoved, cRemoved bool
	for _, e := range d.logs() {
		switch {
		case e.str("msg") == "listener updated" && e.str("listener") == "*:7000":
			aUpdated = true
		case e.str("msg") == "listener removed; draining" && e.str("listener") == "*:7000":
			aRemoved = true
		case e.str("msg") == "listener removed; draining" && e.str("listener") == "*:7002":
			cRemoved = true
		}
	}
	if !aUpdated || aRemoved || !cRemoved {
		t.Errorf("logs: A's listener updated %v (want true), removed %v (want false); C's removed %v (want true)",
			aUpdated, aRemoved, cRemoved)
	}
	if !d.alive() {
		t.Error("tcpmapd exited")
	}
}

// checkSplit opens liveProbes short connections to A and checks that each
// member got its share within 10 points. With 400 connections one standard
// deviation is at most 2.5 points, so 10 is four deviations: 50/50 and
// 80/20 are told apart, noise is not mistaken for either.
func checkSplit(t *testing.T, ctx context.Context, tp *topology, what string, want map[string]float64) {
	t.Helper()
	counts, err := tp.countUpstreams(ctx, proxyAddr(7000), liveProbes, 8)
	if err != nil {
		t.Fatalf("A %s: %v (counts so far %v)", what, err, counts)
	}
	t.Logf("A %s: %v", what, counts)
	for name, k := range counts {
		if _, ok := want[name]; !ok {
			t.Errorf("A %s: %d connections reached %s, not a member of the pair", what, k, name)
		}
	}
	for name, pct := range want {
		got := 100 * float64(counts[name]) / liveProbes
		if got < pct-10 || got > pct+10 {
			t.Errorf("A %s: %s got %.1f%% of %d connections, want %.0f%% ± 10", what, name, got, liveProbes, pct)
		}
	}
}
