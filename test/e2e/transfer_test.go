package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// bulkBytes is how much each direction carries: 1 GiB, or $E2E_BULK_BYTES.
func bulkBytes(t testing.TB) int64 {
	if s := os.Getenv("E2E_BULK_BYTES"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			t.Fatalf("E2E_BULK_BYTES=%q: want a positive integer", s)
		}
		return n
	}
	return 1 << 30
}

const bulkBuf = 256 << 10

// sendStream writes n bytes of a ChaCha8 stream seeded with seed and returns
// their SHA-256. Nothing larger than one buffer is held in memory.
func sendStream(w io.Writer, seed uint64, n int64) ([]byte, error) {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	rng := rand.NewChaCha8(s)
	h := sha256.New()
	buf := make([]byte, bulkBuf)
	for n > 0 {
		k := int64(len(buf))
		if n < k {
			k = n
		}
		_, _ = rng.Read(buf[:k])
		h.Write(buf[:k])
		if _, err := w.Write(buf[:k]); err != nil {
			return nil, err
		}
		n -= k
	}
	return h.Sum(nil), nil
}

// recvStream reads exactly n bytes and returns their SHA-256.
func recvStream(r io.Reader, n int64) ([]byte, error) {
	h := sha256.New()
	got, err := io.CopyBuffer(h, io.LimitReader(r, n), make([]byte, bulkBuf))
	if err == nil && got < n {
		err = fmt.Errorf("stream ended after %d of %d bytes: %w", got, n, io.ErrUnexpectedEOF)
	}
	return h.Sum(nil), err
}

// bulkResult is one end's view of an exchange.
type bulkResult struct {
	sent, received []byte
	err            error
}

// exchange sends n bytes seeded by seed while receiving n bytes, both at
// once. Lengths are known in advance, so the result does not depend on how
// the proxy relays a half-close.
func exchange(c net.Conn, seed uint64, n int64) bulkResult {
	sent := make(chan bulkResult, 1)
	go func() {
		h, err := sendStream(c, seed, n)
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

// TestLargeTransfer moves 1 GiB each way at once through a passthrough
// mapping and through TLS termination, and compares SHA-256 at both ends.
// It runs alone (not parallel): it needs the CPUs.
func TestLargeTransfer(t *testing.T) {
	tp := newTopology(t)
	n := bulkBytes(t)
	const upSeed, downSeed = 0x7c9a11, 0x4d0e55

	// One result channel per upstream, so that a failed subtest's late
	// result cannot be taken for the next one's.
	bulk := func(done chan<- bulkResult) func(c net.Conn, _ *tls.ConnectionState) {
		return func(c net.Conn, _ *tls.ConnectionState) {
			_ = c.SetDeadline(time.Now().Add(4 * time.Minute))
			done <- exchange(c, downSeed, n)
		}
	}
	passDone, termDone := make(chan bulkResult, 4), make(chan bulkResult, 4)
	tp.serveFunc(t, "upstream", 7000, false, bulk(passDone))
	tp.serveFunc(t, "upstream-host-1", 9999, false, bulk(termDone))
	tp.start(t, daemonArgs([]string{configDir(t, []string{"bulk/bulk.yaml"}, nil)})...)

	for _, tc := range []struct {
		name         string
		dial         func(ctx context.Context) (net.Conn, error)
		upstreamDone chan bulkResult
	}{
		{"passthrough", func(ctx context.Context) (net.Conn, error) { return tp.connect(ctx, proxyAddr(7000)) }, passDone},
		{"TLS termination", func(ctx context.Context) (net.Conn, error) {
			return tp.connectTLS(ctx, proxyAddr(2222), "my-host-1")
		}, termDone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 3*time.Minute)
			c, err := tc.dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			client := exchange(c, upSeed, n)
			if client.err != nil {
				t.Fatalf("client: %v", client.err)
			}
			var up bulkResult
			select {
			case up = <-tc.upstreamDone:
			case <-ctx.Done():
				t.Fatal("upstream did not finish")
			}
			if up.err != nil {
				t.Fatalf("upstream: %v", up.err)
			}
			el := time.Since(start)
			if !bytes.Equal(client.sent, up.received) {
				t.Errorf("client→upstream: sent sha256 %x, upstream received %x", client.sent, up.received)
			}
			if !bytes.Equal(up.sent, client.received) {
				t.Errorf("upstream→client: sent sha256 %x, client received %x", up.sent, client.received)
			}
			t.Logf("%d MiB each way in %v (%.0f MiB/s each way)", n>>20, el.Round(time.Millisecond),
				float64(n)/(1<<20)/el.Seconds())
		})
	}
}
