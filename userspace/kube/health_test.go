package kube

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestReachability: the first failed request logs the outage, repeats
// within errorLogEvery do not, a success logs the recovery once, and a
// request its caller cancelled says nothing.
func TestReachability(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	h := &reachability{log: zap.New(core)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	url := srv.URL
	client := &http.Client{Transport: h.wrap(http.DefaultTransport), Timeout: 5 * time.Second}
	get := func(ctx context.Context) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	ctx := context.Background()
	get(ctx) // up: nothing to say
	srv.Close()
	get(ctx)
	get(ctx)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	get(cancelled)
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv2.Close()
	url = srv2.URL
	get(ctx)
	get(ctx)

	var got []string
	for _, e := range logs.All() {
		got = append(got, e.Message)
	}
	want := []string{
		"kubernetes API: unreachable; serving the last copy, client-go retries with backoff",
		"kubernetes API: reachable again",
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("logged %q, want %q", got, want)
	}
}
