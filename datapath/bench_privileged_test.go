package datapath

import (
	"testing"

	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

// BenchmarkPairUnpair is the map cost of one spliced pair's life: six
// inserts at hand-off, eight deletes at close.
func BenchmarkPairUnpair(b *testing.B) {
	privtest.Require(b)
	o, err := Load(Options{PinDir: privtest.PinDir(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	for i := range b.N {
		c := uint64(2*i + 1)
		if err := o.Pair(c, c+1, 1, 1<<20, 0); err != nil {
			b.Fatal(err)
		}
		if err := o.Forget(c, c+1); err != nil {
			b.Fatal(err)
		}
	}
}
