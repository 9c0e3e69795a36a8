package splice

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"time"
)

// The test stream: the 8-byte word at offset 8w is (w+seed)·K, so any
// lost, duplicated or reordered chunk changes the SHA-256 and shows up at
// a known offset in a direct check.
const streamK = 0x9E3779B97F4A7C15

func fillStream(buf []byte, off int64, seed uint64) {
	w := uint64(off/8) + seed
	for i := 0; i+8 <= len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], w*streamK)
		w++
	}
}

// sendStream writes n bytes of the stream (then half-closes when
// closeWrite) and returns their SHA-256.
func sendStream(c *net.TCPConn, n int64, seed uint64, chunk int, closeWrite bool) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, chunk)
	var off int64
	for off < n {
		m := int64(len(buf))
		if n-off < m {
			m = n - off
		}
		fillStream(buf[:m], off, seed)
		h.Write(buf[:m])
		w, err := c.Write(buf[:m])
		off += int64(w)
		if err != nil {
			return [32]byte{}, fmt.Errorf("write at %d: %w", off, err)
		}
	}
	if closeWrite {
		if err := c.CloseWrite(); err != nil {
			return [32]byte{}, err
		}
	}
	return sum(h), nil
}

// recvStream reads to EOF and returns the byte count and SHA-256.
func recvStream(c net.Conn, chunk int, pace func()) (int64, [32]byte, error) {
	h := sha256.New()
	buf := make([]byte, chunk)
	var n int64
	for {
		m, err := c.Read(buf)
		if m > 0 {
			h.Write(buf[:m])
			n += int64(m)
		}
		if errors.Is(err, io.EOF) {
			return n, sum(h), nil
		}
		if err != nil {
			return n, sum(h), err
		}
		if pace != nil {
			pace()
		}
	}
}

func sum(h hash.Hash) (s [32]byte) {
	copy(s[:], h.Sum(nil))
	return s
}

func gbps(n int64, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e9 }
