// Package demo is the built-in upstream behind `make run`: a small echo
// service, so that a newcomer sees bytes flow through tcpmapd with one
// command and no other server to install.
package demo

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Upstream is an echo server: it greets each connection with a banner line
// naming itself, then echoes every byte back until the client half-closes.
type Upstream struct {
	ln   net.Listener
	log  *zap.Logger
	wg   sync.WaitGroup
	once sync.Once
}

// Banner is the first line the demo upstream sends on each connection.
const Banner = "hello from the tcpmap demo upstream"

// StartUpstream listens on addr and serves until Close.
func StartUpstream(addr string, log *zap.Logger) (*Upstream, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("demo upstream: %w", err)
	}
	u := &Upstream{ln: ln, log: log}
	u.wg.Add(1)
	go u.serve()
	log.Info("demo upstream listening", zap.String("addr", ln.Addr().String()))
	return u, nil
}

// Addr is the address the demo upstream listens on.
func (u *Upstream) Addr() net.Addr { return u.ln.Addr() }

func (u *Upstream) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer c.Close()
			fmt.Fprintf(c, "%s (you are %s)\n", Banner, c.RemoteAddr())
			_, _ = io.Copy(c, c)
		}()
	}
}

// Close stops the upstream. Connections still open end when their clients
// close them.
func (u *Upstream) Close() error {
	var err error
	u.once.Do(func() { err = u.ln.Close() })
	return err
}

// Probe connects to addr (through tcpmapd), sends a line and reports what
// came back: the banner and the echo. With serverName set it speaks TLS
// first, trusting any certificate (the demo certificate is self-signed).
func Probe(ctx context.Context, addr, serverName string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	conn := raw
	if serverName != "" {
		tc := tls.Client(raw, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}) //nolint:gosec // demo only
		if err := tc.HandshakeContext(ctx); err != nil {
			return "", fmt.Errorf("tls handshake: %w", err)
		}
		conn = tc
	}
	const msg = "ping through tcpmapd"
	if _, err := fmt.Fprintln(conn, msg); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	banner, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read banner: %w", err)
	}
	echo, err := r.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read echo: %w", err)
	}
	return strings.TrimSpace(banner) + " | echo: " + strings.TrimSpace(echo), nil
}
