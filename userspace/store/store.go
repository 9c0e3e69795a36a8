// Package store keeps the objects applied through the admin API, one YAML
// file per object under a state directory, so that they survive a restart.
// It knows files and YAML documents; validation stays with the config
// package, and the manager decides what the objects mean.
package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// Source is the config.Origin source of every stored object.
const Source = "api"

// fileExt ends every object file; temporary files start with tmpPrefix and
// are never read back.
const (
	fileExt   = ".yaml"
	tmpPrefix = ".tmp-"
)

// Store is a directory of object files. Its methods are safe for
// concurrent use; one process owns the directory.
type Store struct {
	dir string
	mu  sync.Mutex
}

// New returns a store in dir. Nothing is touched on disk until Load or
// Put: a missing or unreadable directory is a problem Load reports, not a
// reason for the daemon not to start.
func New(dir string) *Store { return &Store{dir: dir} }

// Dir is the directory the objects are kept in.
func (s *Store) Dir() string { return s.dir }

// Entry is one stored object.
type Entry struct {
	// Resource is the object as config.LoadBytes read it, with Origin
	// {Source: "api"}.
	Resource config.Resource
	// Data is the YAML document as stored.
	Data []byte
	// Path is the object's file; ModTime is when it was last applied.
	Path    string
	ModTime time.Time
}

// Load reads every object, oldest applied first (ties by kind, namespace,
// name), so that in resolution an older object wins a conflict over a
// newer one. A file that does not load is reported as a problem naming it
// and skipped; the rest still load.
func (s *Store) Load() ([]Entry, []config.Problem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dirProblem := func(err error) []config.Problem {
		return []config.Problem{{Origin: config.Origin{Source: Source, File: s.dir},
			Reason: fmt.Sprintf("state directory: %v; objects applied through the admin API are not served", err), Level: "error"}}
	}
	des, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // nothing applied yet
	}
	if err != nil {
		return nil, dirProblem(unwrapPathError(err))
	}
	var entries []Entry
	var problems []config.Problem
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, fileExt) || !de.Type().IsRegular() {
			continue
		}
		path := filepath.Join(s.dir, name)
		e, probs := loadFile(path, name)
		problems = append(problems, probs...)
		if e != nil {
			entries = append(entries, *e)
		}
	}
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if !a.ModTime.Equal(b.ModTime) {
			return a.ModTime.Before(b.ModTime)
		}
		return FileName(a.Resource.Ref) < FileName(b.Resource.Ref)
	})
	return entries, problems
}

func loadFile(path, name string) (*Entry, []config.Problem) {
	origin := config.Origin{Source: Source, File: path}
	problem := func(format string, args ...any) []config.Problem {
		return []config.Problem{{Origin: origin, Reason: fmt.Sprintf(format, args...), Level: "error"}}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, problem("%v", unwrapPathError(err))
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, problem("%v", unwrapPathError(err))
	}
	rs, probs := config.LoadBytes(path, data, origin)
	for _, p := range probs {
		if !p.IsWarning() {
			return nil, probs
		}
	}
	if len(rs) != 1 {
		return nil, append(probs, problem("stored object file holds %d objects, want exactly 1; not served", len(rs))...)
	}
	r := rs[0]
	if want := FileName(r.Ref); want != name {
		return nil, append(probs, problem("file holds %s, whose file would be %s; not served", r.Ref, want)...)
	}
	r.Origin = config.Origin{Source: Source}
	return &Entry{Resource: r, Data: data, Path: path, ModTime: fi.ModTime()}, probs
}

// Get returns the stored document of ref, or false.
func (s *Store) Get(ref config.Ref) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := os.ReadFile(s.path(ref))
	return data, err == nil
}

// Put stores data as ref's object, replacing any earlier one atomically: a
// crash leaves either the old file or the new one, never a torn one.
func (s *Store) Put(ref config.Ref, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	f, err := os.CreateTemp(s.dir, tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("store %s: %w", ref, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("store %s: %w", ref, err)
	}
	// The data must be on disk before the rename makes it the object.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("store %s: %w", ref, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("store %s: %w", ref, err)
	}
	if err := os.Rename(tmp, s.path(ref)); err != nil {
		return fmt.Errorf("store %s: %w", ref, err)
	}
	ok = true
	return syncDir(s.dir)
}

// Delete removes ref's object and reports whether there was one.
func (s *Store) Delete(ref config.Ref) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := os.Remove(s.path(ref))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("remove %s: %w", ref, err)
	}
	return true, syncDir(s.dir)
}

func (s *Store) path(ref config.Ref) string { return filepath.Join(s.dir, FileName(ref)) }

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("state directory %s: sync: %w", dir, err)
	}
	return nil
}

// FileName is the name of ref's file: "Kind_namespace_name.yaml", each part
// escaped so that no name can reach outside the directory or collide.
func FileName(ref config.Ref) string {
	return escape(ref.Kind) + "_" + escape(ref.Namespace) + "_" + escape(ref.Name) + fileExt
}

// escape keeps the characters of Kubernetes names and percent-encodes the
// rest, including '_' (the separator) and '/'. The kind comes first, so a
// file name never starts with a dot.
func escape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
