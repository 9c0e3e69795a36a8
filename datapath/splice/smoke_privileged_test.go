package splice

import (
	"bytes"
	"testing"
	"time"
)

func TestSmoke(t *testing.T) {
	e := openEngine(t, Options{})
	r := newRig(t, e)
	tp := r.pair(pairOpts{})
	if _, err := tp.client.Write([]byte("hello upstream")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	tp.server.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := tp.server.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], []byte("hello upstream")) {
		t.Fatalf("server read %q, %v", buf[:n], err)
	}
	tp.server.Write([]byte("hello client"))
	tp.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err = tp.client.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], []byte("hello client")) {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}
	t.Logf("conns: %+v", e.Conns())
	tp.client.CloseWrite()
	got, err := readAllTimeout(tp.server, 5*time.Second)
	if err != nil || len(got) != 0 {
		t.Fatalf("server EOF: %q %v", got, err)
	}
	tp.server.CloseWrite()
	got, err = readAllTimeout(tp.client, 5*time.Second)
	if err != nil || len(got) != 0 {
		t.Fatalf("client EOF: %q %v", got, err)
	}
	res := tp.wait(t, 5*time.Second)
	t.Logf("result %+v stats %+v", res, e.Stats())
}
