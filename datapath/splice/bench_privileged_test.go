package splice

import (
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkBulkOneStream moves b.N MiB client→server through one spliced
// pair with a fast sink and reports Gbit/s and the share of bytes that
// went through userspace (pass mode). The client, the sink and the engine
// share this process and the machine's CPUs, like the loopback bench.
//
//	go test -run '^$' -bench BulkOneStream -benchtime 4096x ./datapath/splice/
func BenchmarkBulkOneStream(b *testing.B) {
	const mib = 1 << 20
	for _, bc := range []struct {
		name string
		o    Options
	}{
		{"default", Options{}},
		{"peer-room", Options{PeerRoom: true}},
		{"bound-16MiB", Options{Bound: 16 * mib}},
		{"autotuned-unbounded", Options{RcvBuf: -1, SndBuf: -1, Gap: 64 * mib}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := openEngine(b, bc.o)
			r := newRig(b, e)
			tp := r.pair(pairOpts{})
			var got atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				n, _ := io.Copy(io.Discard, tp.server)
				got.Store(n)
			}()
			buf := make([]byte, mib)
			u0 := e.Stats().UserspaceBytes
			b.SetBytes(mib)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if _, err := tp.client.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			tp.client.CloseWrite()
			<-done
			el := time.Since(start)
			b.StopTimer()
			total := int64(b.N) * mib
			if got.Load() != total {
				b.Fatalf("sink got %d bytes, want %d", got.Load(), total)
			}
			b.ReportMetric(gbps(total, el), "Gbit/s")
			b.ReportMetric(100*float64(e.Stats().UserspaceBytes-u0)/float64(total), "%userspace")
			tp.server.Close()
			tp.wait(b, 10*time.Second)
		})
	}
}

// BenchmarkHandoff measures Splice alone: the per-connection setup cost
// of the kernel datapath (reported as µs/handoff; ns/op includes setting
// up and closing the test connections).
func BenchmarkHandoff(b *testing.B) {
	e := openEngine(b, Options{})
	r := newRig(b, e)
	var spent time.Duration
	for range b.N {
		tp := &testPair{done: make(chan Result, 1)}
		tp.client = dial(b, r.front.Addr())
		tp.proxyC = accept(b, r.front)
		tp.proxyU = dial(b, r.backend.Addr())
		tp.server = accept(b, r.backend)
		start := time.Now()
		if err := e.Splice(Pair{Client: tp.proxyC, Upstream: tp.proxyU, Mapping: "m",
			OnDone: func(res Result) { tp.done <- res }}); err != nil {
			b.Fatal(err)
		}
		spent += time.Since(start)
		tp.client.Close()
		tp.server.Close()
		tp.wait(b, 10*time.Second)
	}
	b.ReportMetric(float64(spent.Microseconds())/float64(b.N), "µs/handoff")
}
