package relay

import (
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
)

// sink counts what it reads until EOF and reports the total.
func sink(total chan<- int64) func(net.Conn) {
	return func(c net.Conn) {
		c.SetDeadline(time.Time{})
		buf := make([]byte, 256<<10)
		var n int64
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		total <- n
	}
}

// benchThroughput writes b.N chunks of 1 MiB to addr and waits for the
// sink to count them.
func benchThroughput(b *testing.B, addr string, got <-chan int64) {
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	c := dial(b, addr)
	c.SetDeadline(time.Time{})
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	if n := <-got; n != int64(b.N)*chunk {
		b.Fatalf("sink got %d bytes, want %d", n, int64(b.N)*chunk)
	}
	b.StopTimer()
}

// BenchmarkRelayThroughput is one stream through the relay (splice path).
func BenchmarkRelayThroughput(b *testing.B) {
	got := make(chan int64, 1)
	u := startUpstream(b, "sink", nil, sink(got))
	_, l := startRelay(b, tcpListener(backend("m", u.addr(), 100)), Options{Logger: zap.NewNop()})
	benchThroughput(b, relayAddr(l), got)
}

// BenchmarkDirectThroughput is the same stream without the relay.
func BenchmarkDirectThroughput(b *testing.B) {
	got := make(chan int64, 1)
	u := startUpstream(b, "sink", nil, sink(got))
	benchThroughput(b, u.ln.Addr().String(), got)
}

// BenchmarkRelayConnection is a whole short connection: connect, 64 bytes
// each way, close. Allocations include the client and the echo upstream.
func BenchmarkRelayConnection(b *testing.B) {
	u := startUpstream(b, "echo", nil, echo)
	_, l := startRelay(b, tcpListener(backend("m", u.addr(), 100)), Options{Logger: zap.NewNop()})
	addr := relayAddr(l)
	msg := make([]byte, 64)
	got := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
