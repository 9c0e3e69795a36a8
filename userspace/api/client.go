package api

import (
	"bytes"
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

// List fetches every object of the desired state.
func (c *Client) List(ctx context.Context) ([]Object, error) {
	var out []Object
	err := c.do(ctx, http.MethodGet, "/v1/objects", nil, nil, &out)
	return out, err
}

// Get fetches one object.
func (c *Client) Get(ctx context.Context, kind, namespace, name string) (Object, error) {
	var out Object
	err := c.do(ctx, http.MethodGet, objectPath(kind, namespace, name), nil, nil, &out)
	return out, err
}

// Apply sends a YAML or JSON stream of objects; file names it in the
// daemon's problem messages. A rejection is a *StatusError with code 422
// and the problems.
func (c *Client) Apply(ctx context.Context, file string, body []byte) (ApplyResult, error) {
	var out ApplyResult
	q := url.Values{}
	if file != "" {
		q.Set("file", file)
	}
	err := c.do(ctx, http.MethodPost, "/v1/apply", q, body, &out)
	return out, err
}

// Delete removes an object applied through the API.
func (c *Client) Delete(ctx context.Context, kind, namespace, name string) (DeleteResult, error) {
	var out DeleteResult
	err := c.do(ctx, http.MethodDelete, objectPath(kind, namespace, name), nil, nil, &out)
	return out, err
}

// Problems fetches the validation problems of the current configuration.
func (c *Client) Problems(ctx context.Context) ([]Problem, error) {
	var out []Problem
	err := c.do(ctx, http.MethodGet, "/v1/problems", nil, nil, &out)
	return out, err
}

func objectPath(kind, namespace, name string) string {
	return "/v1/objects/" + url.PathEscape(kind) + "/" + url.PathEscape(namespace) + "/" + url.PathEscape(name)
}

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	return c.do(ctx, http.MethodGet, path, q, nil, out)
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body []byte, out any) error {
	u := "http://tcpmapd" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/yaml")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnreachable, c.Socket, unwrapDial(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return &StatusError{Code: resp.StatusCode, Message: e.Error, Problems: e.Problems}
		}
		return &StatusError{Code: resp.StatusCode, Message: resp.Status}
	}
	return json.Unmarshal(data, out)
}

// StatusError is an answer the daemon gave with a non-2xx code.
type StatusError struct {
	Code    int
	Message string
	// Problems are a rejected apply's problems.
	Problems []Problem
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
