package kube

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// reachability watches every request the clients make and logs when the
// API server stops answering and when it answers again. client-go's
// reflectors retry a refused watch quietly (only at klog level 4), so
// without this an outage would go unseen in tcpmapd's log.
type reachability struct {
	log *zap.Logger

	mu       sync.Mutex
	down     bool
	since    time.Time
	lastWarn time.Time
}

// wrap is a rest.Config WrapTransport.
func (h *reachability) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		switch {
		case err == nil:
			h.up()
		case req.Context().Err() != nil || errors.Is(err, context.Canceled):
			// the caller gave up (shutdown): says nothing about the server
		default:
			h.failed(err)
		}
		return resp, err
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (h *reachability) failed(err error) {
	h.mu.Lock()
	now := time.Now()
	first := !h.down
	if first {
		h.down, h.since = true, now
	}
	due := first || now.Sub(h.lastWarn) >= errorLogEvery
	if due {
		h.lastWarn = now
	}
	since := h.since
	h.mu.Unlock()
	if due {
		h.log.Warn("kubernetes API: unreachable; serving the last copy, client-go retries with backoff",
			zap.Duration("down_for", now.Sub(since).Round(time.Second)), zap.Error(err))
	}
}

func (h *reachability) up() {
	h.mu.Lock()
	was, since := h.down, h.since
	h.down = false
	h.mu.Unlock()
	if was {
		h.log.Info("kubernetes API: reachable again", zap.Duration("down_for", time.Since(since).Round(time.Second)))
	}
}

// NewForConfig builds the clients from rc, with every request observed so
// that an API server outage and its end are logged, and returns New's
// Source. opts.Dynamic and opts.Clientset are set here.
func NewForConfig(rc *rest.Config, opts Options) (*Source, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	rc = rest.CopyConfig(rc)
	h := &reachability{log: opts.Logger}
	rc.Wrap(h.wrap)
	var err error
	if opts.Dynamic, err = dynamic.NewForConfig(rc); err != nil {
		return nil, err
	}
	if opts.Clientset, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, err
	}
	return New(opts)
}
