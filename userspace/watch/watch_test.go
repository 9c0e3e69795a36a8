package watch

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testDebounce = 100 * time.Millisecond
	// deadline bounds every wait for a reload that must come.
	deadline = 10 * time.Second
	// quiet is how long a test waits to be confident no reload is coming:
	// several debounce periods.
	quiet = 5 * testDebounce
)

// harness runs a Watcher for one test and counts reloads.
type harness struct {
	t       *testing.T
	reloads chan struct{}
	count   atomic.Int64
}

func start(t *testing.T, debounce time.Duration, paths ...string) *harness {
	t.Helper()
	w, err := New(paths, Options{Debounce: debounce, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h := &harness{t: t, reloads: make(chan struct{}, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var inFlight atomic.Int32
	go func() {
		defer close(done)
		w.Run(ctx, func() {
			if inFlight.Add(1) != 1 {
				t.Error("reload called concurrently with itself")
			}
			defer inFlight.Add(-1)
			h.count.Add(1)
			h.reloads <- struct{}{}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(deadline):
			t.Error("Run did not return after ctx was cancelled")
		}
		if err := w.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

// waitReload fails the test unless a reload arrives within the deadline.
func (h *harness) waitReload(what string) {
	h.t.Helper()
	select {
	case <-h.reloads:
	case <-time.After(deadline):
		h.t.Fatalf("%s: no reload within %v", what, deadline)
	}
}

// noReload fails the test if a reload arrives within quiet.
func (h *harness) noReload(what string) {
	h.t.Helper()
	select {
	case <-h.reloads:
		h.t.Fatalf("%s: unexpected reload", what)
	case <-time.After(quiet):
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWriteFileInDirectory(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), "a: 1\n")
	h := start(t, testDebounce, dir)

	write(t, filepath.Join(dir, "a.yaml"), "a: 2\n")
	h.waitReload("write a.yaml")
	h.noReload("after the one reload")
}

func TestBurstCoalesces(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "a.yaml")
	write(t, f, "a: 0\n")
	// A longer debounce keeps a slow machine's pauses between writes from
	// splitting the burst.
	h := start(t, 500*time.Millisecond, dir)

	for i := range 20 {
		write(t, f, "a: "+string(rune('a'+i))+"\n")
	}
	h.waitReload("20 writes")
	// Wait well past the debounce and the 10× cap for a stray second call.
	time.Sleep(2 * time.Second)
	if got, want := h.count.Load(), int64(1); got != want {
		t.Errorf("reloads after a burst of 20 writes = %d, want %d", got, want)
	}
}

func TestContinuousStreamStillReloads(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "a.yaml")
	write(t, f, "a: 0\n")
	debounce := 50 * time.Millisecond
	h := start(t, debounce, dir)

	// Write every debounce/5 for 40 debounce times: quiet never arrives,
	// so only the 10× cap can produce a reload before the stream ends.
	stop := time.Now().Add(40 * debounce)
	sawDuringStream := false
	for time.Now().Before(stop) {
		write(t, f, "a: 1\n")
		select {
		case <-h.reloads:
			sawDuringStream = true
		case <-time.After(debounce / 5):
		}
	}
	if !sawDuringStream {
		t.Error("no reload while changes kept streaming, want one after at most 10× debounce")
	}
}

func TestRenameReplaceOfWatchedFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "tcpmap.yaml")
	write(t, f, "a: 1\n")
	h := start(t, testDebounce, f)

	replace := func(content string) {
		tmp := filepath.Join(dir, ".tcpmap.yaml.tmp")
		write(t, tmp, content)
		if err := os.Rename(tmp, f); err != nil {
			t.Fatal(err)
		}
	}
	replace("a: 2\n")
	h.waitReload("rename over the file")

	write(t, f, "a: 3\n")
	h.waitReload("in-place write after the rename")

	replace("a: 4\n")
	h.waitReload("second rename over the file")

	// A sibling that is not the watched file does not count.
	write(t, filepath.Join(dir, "other.yaml"), "b: 1\n")
	h.noReload("sibling of a watched file")
}

func TestNewFileInDirectory(t *testing.T) {
	dir := t.TempDir()
	h := start(t, testDebounce, dir)

	write(t, filepath.Join(dir, "new.yml"), "a: 1\n")
	h.waitReload("new file")
}

func TestNewSubdirectory(t *testing.T) {
	dir := t.TempDir()
	h := start(t, testDebounce, dir)

	sub := filepath.Join(dir, "team", "apps")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(sub, "a.json"), "{}\n")
	h.waitReload("new subdirectory with a file")

	// The new subdirectory is now watched itself.
	write(t, filepath.Join(sub, "a.json"), `{"a": 1}`+"\n")
	h.waitReload("write in the new subdirectory")
}

// configMap lays out dir the way kubelet's AtomicWriter does: visible names
// are links through `..data` to a timestamped directory.
type configMap struct {
	t   *testing.T
	dir string
	gen int
}

func newConfigMap(t *testing.T, dir, content string) *configMap {
	c := &configMap{t: t, dir: dir}
	c.publish(content)
	if err := os.Symlink(filepath.Join("..data", "app.yaml"), filepath.Join(dir, "app.yaml")); err != nil {
		t.Fatal(err)
	}
	return c
}

// publish writes a new generation and swaps `..data` to it atomically.
func (c *configMap) publish(content string) {
	c.t.Helper()
	c.gen++
	gen := filepath.Join(c.dir, "..2025_01_01_00_00_0"+string(rune('0'+c.gen)))
	if err := os.Mkdir(gen, 0o755); err != nil {
		c.t.Fatal(err)
	}
	write(c.t, filepath.Join(gen, "app.yaml"), content)
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		c.t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(c.dir, "..data"))
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		c.t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(c.dir, old)); err != nil {
			c.t.Fatal(err)
		}
	}
}

func TestConfigMapSwap(t *testing.T) {
	for _, tc := range []struct {
		name string
		path func(dir string) string
	}{
		{"directory", func(dir string) string { return dir }},
		{"file", func(dir string) string { return filepath.Join(dir, "app.yaml") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cm := newConfigMap(t, dir, "a: 1\n")
			h := start(t, testDebounce, tc.path(dir))

			cm.publish("a: 2\n")
			h.waitReload("first ..data swap")
			cm.publish("a: 3\n")
			h.waitReload("second ..data swap")

			got, err := os.ReadFile(filepath.Join(dir, "app.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if want := "a: 3\n"; string(got) != want {
				t.Errorf("app.yaml = %q, want %q", got, want)
			}
		})
	}
}

func TestIgnoredChanges(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), "a: 1\n")
	h := start(t, testDebounce, dir)

	write(t, filepath.Join(dir, "notes.txt"), "hello\n")
	write(t, filepath.Join(dir, ".a.yaml.swp"), "swap\n")
	write(t, filepath.Join(dir, "a.yaml~"), "backup\n")
	write(t, filepath.Join(dir, ".hidden.yaml"), "a: 1\n")
	if err := os.Remove(filepath.Join(dir, "notes.txt")); err != nil {
		t.Fatal(err)
	}
	h.noReload("non-config changes")

	// The watcher is still alive: a config change is seen.
	write(t, filepath.Join(dir, "a.yaml"), "a: 2\n")
	h.waitReload("config change after ignored ones")
}

func TestMissingPathCreated(t *testing.T) {
	base := t.TempDir()
	for _, tc := range []struct {
		name   string
		path   string
		create func(t *testing.T, path string)
	}{
		{"file", filepath.Join(base, "f", "later.yaml"), func(t *testing.T, p string) {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			write(t, p, "a: 1\n")
		}},
		{"directory", filepath.Join(base, "d", "conf.d"), func(t *testing.T, p string) {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(p, "a.yaml"), "a: 1\n")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, testDebounce, tc.path)
			tc.create(t, tc.path)
			h.waitReload("creating a missing path")
			// Once it exists it is watched like any other.
			target := tc.path
			if tc.name == "directory" {
				target = filepath.Join(tc.path, "a.yaml")
			}
			write(t, target, "a: 2\n")
			h.waitReload("write after creation")
		})
	}
}

func TestRunReturnsOnCancel(t *testing.T) {
	w, err := New([]string{t.TempDir()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, func() {})
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(deadline):
		t.Fatal("Run did not return after cancel")
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		paths []string
		opts  Options
	}{
		{"no paths", nil, Options{}},
		{"negative debounce", []string{t.TempDir()}, Options{Debounce: -time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := New(tc.paths, tc.opts)
			if err == nil {
				w.Close()
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}
