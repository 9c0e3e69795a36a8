package watch

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// kind is what a root path was at the last resync.
type kind int

const (
	kindUnknown kind = iota // before the first resync
	kindMissing
	kindFile
	kindDir
)

// maxDepth matches config.Load's limit on directory nesting, which also
// stops symbolic link loops.
const maxDepth = 64

// root is one path given to New.
type root struct {
	path string // absolute
	kind kind
}

// resync makes the set of watched paths match the file system: every
// non-hidden directory under a directory root (following symbolic links, as
// config.Load does), the parent of a file root and the file itself, and the
// nearest existing ancestor of a missing root. Paths are added again even
// when already watched, because a directory or file that was replaced by
// one of the same name needs a watch on its new inode; adding a live watch
// again is a cheap no-op. It reports whether a root appeared, vanished or
// changed between file and directory, which changes what Load reads.
func (w *Watcher) resync() (rootsChanged bool) {
	want := make(map[string]bool)
	hidden := make(map[string]bool)
	visited := make(map[string]bool) // real paths of directories, against loops and duplicates

	addDir := func(p string) {
		real, err := filepath.EvalSymlinks(p)
		if err != nil || visited[real] {
			return
		}
		visited[real] = true
		want[p] = true
	}
	// scan lists p's entries, recording hidden links and directories, and
	// calls sub for each non-hidden directory.
	scan := func(p string, sub func(string)) {
		entries, err := os.ReadDir(p)
		if err != nil {
			return
		}
		for _, e := range entries {
			child := filepath.Join(p, e.Name())
			if isHidden(e.Name()) {
				if e.Type()&(fs.ModeSymlink|fs.ModeDir) != 0 {
					hidden[child] = true
				}
				continue
			}
			if sub != nil {
				if info, err := os.Stat(child); err == nil && info.IsDir() {
					sub(child)
				}
			}
		}
	}
	var walk func(p string, depth int)
	walk = func(p string, depth int) {
		if depth > maxDepth {
			return
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil || visited[real] {
			return
		}
		addDir(p)
		scan(p, func(child string) { walk(child, depth+1) })
	}

	for _, r := range w.roots {
		k := kindMissing
		if info, err := os.Stat(r.path); err == nil {
			k = kindFile
			if info.IsDir() {
				k = kindDir
			}
		}
		if r.kind != kindUnknown && r.kind != k {
			rootsChanged = true
		}
		r.kind = k
		switch k {
		case kindDir:
			walk(r.path, 0)
		case kindFile:
			// The parent directory sees editors that save by renaming a
			// new file over the old one and kubelet's `..data` swaps; the
			// file itself sees writes made through another path to the
			// same inode, as with a bind-mounted single file or a symbolic
			// link into another directory.
			parent := filepath.Dir(r.path)
			addDir(parent)
			scan(parent, nil)
			want[r.path] = true
		case kindMissing:
			for a := filepath.Dir(r.path); ; a = filepath.Dir(a) {
				if info, err := os.Stat(a); err == nil && info.IsDir() {
					addDir(a)
					break
				}
				if a == filepath.Dir(a) {
					break
				}
			}
		}
	}

	for p := range want {
		if err := w.fsw.Add(p); err != nil {
			// Usually a race with a removal, which the next event fixes.
			w.log.Debug("config watch: cannot watch path", zap.String("path", p), zap.Error(err))
			delete(want, p)
		}
	}
	for p := range w.watched {
		if !want[p] {
			_ = w.fsw.Remove(p) // the kernel may have dropped it already
		}
	}
	w.watched = want
	w.hidden = hidden
	return rootsChanged
}

// classify reports whether ev can change what config.Load reads (relevant)
// and whether it may have changed which paths need watches (structural).
func (w *Watcher) classify(ev fsnotify.Event) (relevant, structural bool) {
	name := filepath.Clean(ev.Name)
	base := filepath.Base(name)
	treeOp := ev.Op&(fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0

	// What the name is now, if anything; a removed name is judged by what
	// the last resync knew about it.
	var isDir, isLinkOrDir bool
	if info, err := os.Stat(name); err == nil {
		isDir = info.IsDir()
	}
	if info, err := os.Lstat(name); err == nil {
		isLinkOrDir = info.Mode()&(fs.ModeSymlink|fs.ModeDir) != 0
	} else {
		isLinkOrDir = w.hidden[name]
	}
	wasDir := w.watched[name] && !w.isFileRoot(name)

	if treeOp && (isDir || wasDir || isLinkOrDir) {
		structural = true
	}

	for _, r := range w.roots {
		switch {
		case name == r.path:
			// The root itself: created, removed, replaced or written.
			relevant, structural = true, structural || treeOp
		case isAncestor(name, r.path):
			// A directory on the way to a missing root, or a root's
			// ancestor renamed away.
			structural = structural || treeOp
		case r.kind == kindDir && isAncestor(r.path, name):
			if isHidden(base) {
				// ConfigMap mounts publish new content by swapping the
				// `..data` link; hidden regular files (.swp) are noise.
				if isLinkOrDir {
					relevant = true
				}
				continue
			}
			if configExt(base) || (treeOp && (isDir || wasDir)) {
				relevant = true
			}
		case r.kind == kindFile && filepath.Dir(name) == filepath.Dir(r.path):
			// A file root mounted from a ConfigMap is a link through
			// `..data`, whose swap changes the file's content.
			if isHidden(base) && isLinkOrDir {
				relevant = true
			}
		}
	}
	return relevant, structural
}

// isFileRoot reports whether p is a root that was a file at the last resync;
// its watch is a file watch, not a directory one.
func (w *Watcher) isFileRoot(p string) bool {
	for _, r := range w.roots {
		if r.path == p && r.kind == kindFile {
			return true
		}
	}
	return false
}

// isAncestor reports whether a is a proper ancestor directory of p; both
// are clean absolute paths.
func isAncestor(a, p string) bool {
	if a == p {
		return false
	}
	if a == string(filepath.Separator) {
		return true
	}
	return strings.HasPrefix(p, a+string(filepath.Separator))
}

// isHidden matches config.Load, which skips names starting with a dot.
func isHidden(name string) bool {
	return strings.HasPrefix(name, ".")
}

// configExt matches the extensions config.Load reads in directories.
func configExt(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}
