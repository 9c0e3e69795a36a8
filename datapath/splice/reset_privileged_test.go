package splice

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

func TestResetPropagates(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	for _, tc := range []struct {
		name       string
		clientSide bool
		want       CloseReason
	}{
		{"client reset", true, ClientReset},
		{"upstream reset", false, UpstreamReset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := r.pair(pairOpts{})
			// Some traffic first, so the reset hits a live splice.
			exchangeSmall(t, tp)
			resetter, other := tp.client, tp.server
			if !tc.clientSide {
				resetter, other = other, resetter
			}
			resetter.SetLinger(0)
			resetter.Close()
			other.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadAll(other)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("other side read error %v, want ECONNRESET (reset passed on)", err)
			}
			res := tp.wait(t, 5*time.Second)
			if res.Reason != tc.want {
				t.Errorf("reason %s, want %s", res.Reason, tc.want)
			}
		})
	}
}

// exchangeSmall sends one small message each way and reads it back.
func exchangeSmall(t *testing.T, tp *testPair) {
	t.Helper()
	for _, d := range [][2]*net.TCPConn{{tp.client, tp.server}, {tp.server, tp.client}} {
		if _, err := d[0].Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		d[1].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(d[1], buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q, %v", buf, err)
		}
	}
}
