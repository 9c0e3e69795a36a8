package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ErrUnreachable wraps every failure to talk to the daemon at all (no
// socket, nobody listening, permission denied), so the CLI can exit 3.
var ErrUnreachable = errors.New("daemon unreachable")

// Client talks to tcpmapd's admin socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{
		Socket: path,
		http: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", path)
				},
			},
		},
	}
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.get(ctx, "/v1/status", nil, &s)
	return s, err
}

// Conns fetches live connections, of one mapping when mapping is set.
func (c *Client) Conns(ctx context.Context, mapping string) ([]Conn, error) {
	var conns []Conn
	q := url.Values{}
	if mapping != "" {
		q.Set("mapping", mapping)
	}
	err := c.get(ctx, "/v1/conns", q, &conns)
	return conns, err
}

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	u := "http://tcpmapd" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnreachable, c.Socket, unwrapDial(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return &StatusError{Code: resp.StatusCode, Message: e.Error}
		}
		return &StatusError{Code: resp.StatusCode, Message: resp.Status}
	}
	return json.Unmarshal(body, out)
}

// StatusError is an answer the daemon gave with a non-2xx code.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// unwrapDial turns "Get "http://tcpmapd/v1/status": dial unix ...: connect:
// no such file or directory" into its last, useful part.
func unwrapDial(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
