package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TestHalfClose: a client that finishes sending (FIN, or TLS close_notify
// then FIN) still receives the upstream's answer, in every relay mode: the
// proxy passes the half-close on instead of closing both ways.
func TestHalfClose(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	// The upstream reads to EOF, then answers with what it received.
	reply := func(c net.Conn, _ *tls.ConnectionState) {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		h, err := recvStream(c, 1<<62)
		if err == nil || !isEOF(err) {
			fmt.Fprintf(c, "error %v\n", err)
			return
		}
		fmt.Fprintf(c, "sha256=%x\n", h)
	}
	tp.serveFunc(t, "upstream", 7000, false, reply)
	tp.serveFunc(t, "upstream-host-1", 9999, false, reply)
	tp.serveFunc(t, "upstream-host-2", 9999, true, reply)
	tp.serveFunc(t, "upstream-host", 9999, true, reply)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"lifecycle/halfclose.yaml"}, nil)})...)

	type closeWriter interface {
		net.Conn
		CloseWrite() error
	}
	for _, tc := range []struct {
		name string
		dial func(ctx context.Context) (closeWriter, error)
	}{
		{"passthrough", func(ctx context.Context) (closeWriter, error) {
			c, err := tp.connect(ctx, proxyAddr(7000))
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		}},
		{"termination", func(ctx context.Context) (closeWriter, error) {
			return tp.connectTLS(ctx, proxyAddr(2222), "my-host-1")
		}},
		{"termination and origination", func(ctx context.Context) (closeWriter, error) {
			return tp.connectTLS(ctx, proxyAddr(2222), "my-host-2")
		}},
		{"origination", func(ctx context.Context) (closeWriter, error) {
			c, err := tp.connect(ctx, proxyAddr(7001))
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 30*time.Second)
			c, err := tc.dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sent, err := sendStream(c, 99, 1<<20)
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("close write: %v", err)
			}
			got, err := io.ReadAll(c)
			if err != nil && !isEOF(err) {
				t.Fatalf("read the answer after half-close: %v (got %q)", err, got)
			}
			if want := fmt.Sprintf("sha256=%x\n", sent); string(got) != want {
				t.Errorf("after half-close the upstream answered %q, want %q", got, want)
			}
		})
	}
}

// isEOF reports an orderly end of stream: EOF, or recvStream's short read
// ending in EOF.
func isEOF(err error) bool {
	return err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF)
}
