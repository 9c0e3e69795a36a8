package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestReloadSIGHUP: a mapping added to the config directory is served after
// SIGHUP while a live connection keeps flowing.
func TestReloadSIGHUP(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 7000, false)
	tp.serveEcho(t, "cockroach", 7001, false)
	dir := configDir(t, []string{"lifecycle/first.yaml"}, nil)
	d := tp.start(t, daemonArgs([]string{dir})...)

	live, err := tp.connect(ctx, proxyAddr(7000))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if g, err := roundTrip(live); err != nil {
		t.Fatalf("live connection: %v", err)
	} else {
		checkGreeting(t, "live connection", g, want{upstream: "upstream", port: 7000})
	}
	if c, err := tp.connect(ctx, proxyAddr(7001)); err == nil {
		c.Close()
		t.Fatal("port 7001 accepts before the mapping is added")
	}

	// Keep the live connection busy through the reload.
	var echoes atomic.Int64
	var pingErr error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := echo(live); err != nil {
				pingErr = err
				return
			}
			echoes.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	stopPinger := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopPinger()

	b, err := os.ReadFile("testdata/lifecycle/added.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "added.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	atReload := echoes.Load()
	d.signal(syscall.SIGHUP)

	g, err := poll(ctx, 15*time.Second, func(ctx context.Context) (greeting, error) {
		return tp.reach(ctx, proxyAddr(7001))
	})
	if err != nil {
		t.Fatalf("added mapping on port 7001 after SIGHUP: %v", err)
	}
	checkGreeting(t, "added mapping", g, want{upstream: "cockroach", port: 7001})

	time.Sleep(300 * time.Millisecond)
	stopPinger()
	if pingErr != nil {
		t.Fatalf("live connection broke during reload: %v", pingErr)
	}
	if n := echoes.Load(); n <= atReload {
		t.Errorf("live connection: %d echoes before SIGHUP, %d after; want more after", atReload, n)
	}
	if err := echo(live); err != nil {
		t.Errorf("live connection after reload: %v", err)
	}
	if g, err := tp.reach(ctx, proxyAddr(7000)); err != nil {
		t.Errorf("port 7000 after reload: %v", err)
	} else {
		checkGreeting(t, "port 7000 after reload", g, want{upstream: "upstream", port: 7000})
	}
	if !d.alive() {
		t.Error("tcpmapd exited")
	}
}

// TestReloadRemovesMapping: after the mapping of a live connection is
// removed and SIGHUP sent, its port refuses new connections while the live
// connection keeps flowing (it drains).
func TestReloadRemovesMapping(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 7000, false)
	tp.serveEcho(t, "cockroach", 7001, false)
	dir := configDir(t, []string{"lifecycle/first.yaml", "lifecycle/added.yaml"}, nil)
	d := tp.start(t, daemonArgs([]string{dir}, "--drain-timeout", "30s")...)

	live, err := tp.connect(ctx, proxyAddr(7000))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if _, err := roundTrip(live); err != nil {
		t.Fatalf("live connection: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "first.yaml")); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	_, err = poll(ctx, 15*time.Second, func(ctx context.Context) (struct{}, error) {
		c, err := tp.connect(ctx, proxyAddr(7000))
		if err == nil {
			c.Close()
			return struct{}{}, errors.New("port 7000 still accepts")
		}
		return struct{}{}, nil
	})
	if err != nil {
		t.Fatalf("after removing mapping first and SIGHUP: %v", err)
	}
	for i := 0; i < 10; i++ {
		if err := echo(live); err != nil {
			t.Fatalf("live connection of the removed mapping (echo %d): %v", i, err)
		}
	}
	if g, err := tp.reach(ctx, proxyAddr(7001)); err != nil {
		t.Errorf("port 7001 after reload: %v", err)
	} else {
		checkGreeting(t, "port 7001 after reload", g, want{upstream: "cockroach", port: 7001})
	}
}

// TestDrainSIGTERM: after SIGTERM the daemon stops accepting, a live
// connection still finishes, then the process exits 0.
func TestDrainSIGTERM(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 7000, false)
	const drain = 10 * time.Second
	dir := configDir(t, []string{"lifecycle/first.yaml"}, nil)
	d := tp.start(t, daemonArgs([]string{dir}, "--drain-timeout", drain.String())...)

	live, err := tp.connect(ctx, proxyAddr(7000))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if _, err := roundTrip(live); err != nil {
		t.Fatalf("live connection: %v", err)
	}

	d.signal(syscall.SIGTERM)
	sigterm := time.Now()

	// New connections are refused once the listener is closed.
	_, err = poll(ctx, 10*time.Second, func(ctx context.Context) (struct{}, error) {
		c, err := tp.connect(ctx, proxyAddr(7000))
		if err == nil {
			c.Close()
			return struct{}{}, errors.New("port 7000 still accepts")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return struct{}{}, err
		}
		return struct{}{}, nil
	})
	if err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}

	// The live connection keeps working during the drain.
	for i := 0; i < 20; i++ {
		if err := echo(live); err != nil {
			t.Fatalf("live connection during drain (echo %d): %v", i, err)
		}
	}
	live.Close()

	wctx, cancel := context.WithTimeout(ctx, drain+10*time.Second)
	defer cancel()
	code, err := d.wait(wctx)
	if err != nil {
		t.Fatalf("after SIGTERM and the last connection closed: %v", err)
	}
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	t.Logf("exited %v after SIGTERM", time.Since(sigterm).Round(time.Millisecond))
}

// poll calls f until it succeeds or max passes, returning the last error.
func poll[T any](ctx context.Context, max time.Duration, f func(ctx context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := f(actx)
		acancel()
		if err == nil {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
