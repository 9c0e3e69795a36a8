// Package watch tells the daemon when its configuration files have changed.
// It watches the paths given to config.Load, filters the file system events
// down to the ones that can change what Load reads, and calls a reload
// function once a burst of changes has settled.
package watch

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// DefaultDebounce is the quiet time Run waits for when Options.Debounce is
// zero: long enough to cover an editor's save or a kubelet ConfigMap swap,
// short enough that an operator does not wonder whether the edit was seen.
const DefaultDebounce = 500 * time.Millisecond

// maxDelayFactor bounds how long a continuous stream of changes can hold
// back a reload, as a multiple of the debounce time, so that a file that is
// rewritten forever (a runaway generator) still gets loaded.
const maxDelayFactor = 10

// maxLoggedTriggers bounds the event names kept for the debug log line of
// one reload; a `cp -r` of a large tree must not make that line huge.
const maxLoggedTriggers = 8

// Options tunes a Watcher. The zero value is usable.
type Options struct {
	// Debounce is the quiet time after the last relevant change before
	// reload is called; zero means DefaultDebounce.
	Debounce time.Duration
	// Logger receives debug lines naming what triggered each reload and
	// warnings for watch errors; nil discards them.
	Logger *zap.Logger
}

// Watcher watches configuration paths for changes. Create it with New, call
// Run once, and Close it when done.
type Watcher struct {
	fsw      *fsnotify.Watcher
	log      *zap.Logger
	debounce time.Duration
	roots    []*root

	// watched holds every path currently added to fsw, so that resync can
	// remove the ones no longer wanted and classify can tell a removed
	// subdirectory from a removed file. Only Run's goroutine (and New,
	// before Run starts) touches it.
	watched map[string]bool
	// hidden holds the hidden symbolic links and directories (ConfigMap
	// `..data` and its timestamped targets) seen in watched directories at
	// the last resync, so that their removal, which can no longer be
	// inspected, still counts as a change.
	hidden map[string]bool
}

// New starts watching paths, which are files or directories as given to
// config.Load; a path that does not exist yet is watched through its nearest
// existing ancestor so that creating it is seen. Changes that happen between
// New and Run are not lost: they are delivered when Run starts.
func New(paths []string, opts Options) (*Watcher, error) {
	if len(paths) == 0 {
		return nil, errors.New("watch: no paths given")
	}
	if opts.Debounce < 0 {
		return nil, fmt.Errorf("watch: debounce %v: must not be negative", opts.Debounce)
	}
	if opts.Debounce == 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	w := &Watcher{
		log:      opts.Logger,
		debounce: opts.Debounce,
		watched:  make(map[string]bool),
		hidden:   make(map[string]bool),
	}
	for _, p := range paths {
		// Absolute paths make event names, which fsnotify builds from the
		// watched path, comparable with the roots ("." would give "./x").
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("watch: path %q: %w", p, err)
		}
		w.roots = append(w.roots, &root{path: abs})
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	w.fsw = fsw
	w.resync()
	return w, nil
}

// Close stops watching. Run, if still running, returns.
func (w *Watcher) Close() error {
	return w.fsw.Close()
}

// Run calls reload once after each burst of relevant changes, when no
// further change has arrived for the debounce time, or at the latest ten
// debounce times after the first change of a burst that never pauses. reload
// runs on Run's goroutine, so calls never overlap; changes made while it
// runs lead to one more call afterwards. Run returns when ctx is done (after
// a reload in progress returns) or when the Watcher is closed.
func (w *Watcher) Run(ctx context.Context, reload func()) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()

	var (
		pending  bool
		first    time.Time
		count    int
		triggers []string
	)
	mark := func(reason string) {
		now := time.Now()
		if !pending {
			pending, first = true, now
		}
		count++
		if len(triggers) < maxLoggedTriggers {
			triggers = append(triggers, reason)
		}
		deadline := now.Add(w.debounce)
		if limit := first.Add(maxDelayFactor * w.debounce); deadline.After(limit) {
			deadline = limit
		}
		timer.Reset(time.Until(deadline))
	}

	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			relevant, structural := w.classify(ev)
			if structural && w.resync() {
				relevant = true
			}
			if relevant {
				mark(ev.String())
			}
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			w.log.Warn("config watch error", zap.Error(err))
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// Events were dropped, so anything may have changed,
				// including new directories that need watches.
				w.resync()
				mark("event queue overflow")
			}
		case <-timer.C:
			// A last full resync catches directories created in ways the
			// event stream did not show (mkdir -p, moves from elsewhere).
			w.resync()
			w.log.Debug("config changed, reloading",
				zap.Int("events", count), zap.Strings("triggers", triggers),
				zap.Duration("since_first", time.Since(first)))
			pending, count, triggers = false, 0, nil
			if ctx.Err() != nil {
				return
			}
			reload()
		}
	}
}
