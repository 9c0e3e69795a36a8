package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
)

// Backend answers the API's questions; the daemon implements it from the
// manager and the kernel datapath.
type Backend interface {
	Status() Status
	// Conns lists live connections, of one mapping ("namespace/name" or
	// "name" in any namespace) when mapping is not empty.
	Conns(mapping string) []Conn
}

// Server serves the admin API on a unix socket.
type Server struct {
	backend Backend
	objects Objects // nil: the object endpoints answer 503
	log     *zap.Logger
	http    *http.Server
	ln      net.Listener
	path    string
}

// Option configures a Server.
type Option func(*Server)

// WithObjects serves the object endpoints (list, get, apply, delete,
// problems) from o.
func WithObjects(o Objects) Option { return func(s *Server) { s.objects = o } }

// NewServer returns a server for backend; call Serve.
func NewServer(backend Backend, log *zap.Logger, opts ...Option) *Server {
	s := &Server{backend: backend, log: log}
	for _, o := range opts {
		o(s)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/conns", s.conns)
	mux.HandleFunc("GET /v1/objects", s.listObjects)
	mux.HandleFunc("GET /v1/objects/{kind}/{namespace}/{name}", s.getObject)
	mux.HandleFunc("DELETE /v1/objects/{kind}/{namespace}/{name}", s.deleteObject)
	mux.HandleFunc("POST /v1/apply", s.apply)
	mux.HandleFunc("GET /v1/problems", s.listProblems)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// Listen creates the socket at path with mode 0600 (its directory 0755),
// replacing a stale socket a crashed daemon left behind.
func (s *Server) Listen(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}
	// The umask makes the socket 0600 from its first moment, so there is
	// no window in which others could connect before a chmod.
	ln, err := listenUnixPrivate(path)
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	s.ln, s.path = ln, path
	return nil
}

// removeStaleSocket removes path if it is a socket nobody answers on; a
// live one means another tcpmapd runs, which is an error.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("admin socket %s: exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("admin socket %s: another tcpmapd is listening on it", path)
	}
	return os.Remove(path)
}

// Serve answers requests until Close. Call Listen first.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.http.Shutdown(ctx)
	if s.path != "" {
		if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.backend.Status())
}

func (s *Server) conns(w http.ResponseWriter, r *http.Request) {
	conns := s.backend.Conns(r.URL.Query().Get("mapping"))
	if conns == nil {
		conns = []Conn{}
	}
	writeJSON(w, http.StatusOK, conns)
}

// Error is the body of every non-2xx answer. A rejected apply (422) also
// lists its problems.
type Error struct {
	Error    string    `json:"error"`
	Problems []Problem `json:"problems,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
