//go:build soak

// A soak test, built only with -tags soak, to be looped by hand while the
// duplication seen once with the relay's deferred hand-off (--splice-after-
// bytes; datapath/README.md) is hunted:
//
//	go test -tags soak -count=5 -run TestMidStreamHandoffUnderLoad ./datapath/splice/

package splice

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMidStreamHandoffUnderLoad: bytes flow both ways at full speed from
// the start; "userspace" (this test) relays the first ones, as the relay's
// deferred hand-off does, stops both directions between two reads with a
// read deadline in the past, and only then calls Splice on the busy
// sockets. Every byte must arrive once and in order, and the pair end with
// FIN both ways.
func TestMidStreamHandoffUnderLoad(t *testing.T) {
	size := envInt("SPLICE_HANDOFF_BYTES", 64<<20)
	rounds := int(envInt("SPLICE_HANDOFF_ROUNDS", 20))
	e := openEngine(t, Options{})
	busyLoad(t, 2)
	r := newRig(t, e)
	for round := range rounds {
		// Vary the threshold so the pause lands at different places in
		// the skbs.
		threshold := int64(16<<10) + int64(round)*7919
		var results sync.WaitGroup
		var sent, got [2][32]byte
		var gotN [2]int64
		errs := make([]error, 4)
		tp := r.pair(pairOpts{beforeSplice: func(tp *testPair) {
			deadline := time.Now().Add(2 * time.Minute)
			for _, c := range []*net.TCPConn{tp.client, tp.server} {
				_ = c.SetDeadline(deadline)
			}
			results.Add(4)
			go func() { defer results.Done(); sent[0], errs[0] = sendStream(tp.client, size, 1, 64<<10, true) }()
			go func() { defer results.Done(); sent[1], errs[1] = sendStream(tp.server, size, 2, 64<<10, true) }()
			go func() { defer results.Done(); gotN[0], got[0], errs[2] = recvStream(tp.server, 256<<10, nil) }()
			go func() { defer results.Done(); gotN[1], got[1], errs[3] = recvStream(tp.client, 256<<10, nil) }()
			if err := relayUntil(tp.proxyC, tp.proxyU, threshold); err != nil {
				t.Fatalf("round %d: userspace relay before the hand-off: %v", round, err)
			}
		}})
		results.Wait()
		for i, what := range []string{"client send", "server send", "server receive", "client receive"} {
			if errs[i] != nil {
				t.Fatalf("round %d (threshold %d): %s: %v", round, threshold, what, errs[i])
			}
		}
		for d, name := range []string{"client→server", "server→client"} {
			if gotN[d] != size || got[d] != sent[d] {
				t.Fatalf("round %d (threshold %d): %s: got %d bytes (want %d), sha256 equal %v", round, threshold, name, gotN[d], size, got[d] == sent[d])
			}
		}
		select {
		case res := <-tp.done:
			if res.Reason != Closed {
				t.Fatalf("round %d: reason %s, want %s", round, res.Reason, Closed)
			}
		case <-time.After(time.Minute):
			t.Fatalf("round %d: pair not closed", round)
		}
	}
}

// relayUntil copies a↔b through buffers until threshold bytes have moved
// both ways together, then stops both directions at their next read and
// clears the deadlines: what the relay's deferred hand-off does before it
// calls Splice.
func relayUntil(a, b *net.TCPConn, threshold int64) error {
	var moved atomic.Int64
	var pausing atomic.Bool
	pause := func() {
		if pausing.CompareAndSwap(false, true) {
			past := time.Unix(1, 0)
			_ = a.SetReadDeadline(past)
			_ = b.SetReadDeadline(past)
		}
	}
	copyDir := func(dst, src *net.TCPConn) error {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return werr
				}
				if moved.Add(int64(n)) >= threshold {
					pause()
				}
			}
			switch {
			case err == nil:
			case errors.Is(err, os.ErrDeadlineExceeded) && pausing.Load():
				return nil
			default:
				return err
			}
		}
	}
	errc := make(chan error, 2)
	go func() { errc <- copyDir(b, a) }()
	go func() { errc <- copyDir(a, b) }()
	var errs []error
	for range 2 {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	_ = a.SetDeadline(time.Time{})
	_ = b.SetDeadline(time.Time{})
	if len(errs) > 0 {
		return fmt.Errorf("%v", errs)
	}
	return nil
}
