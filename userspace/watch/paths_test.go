package watch

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/fsnotify/fsnotify"
)

func TestClassify(t *testing.T) {
	tmp := t.TempDir()
	conf := filepath.Join(tmp, "conf")
	single := filepath.Join(tmp, "single", "tcpmap.yaml")
	for _, d := range []string{filepath.Join(conf, "sub"), filepath.Join(conf, "..2025"), filepath.Dir(single)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("..2025", filepath.Join(conf, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(conf, "a.yaml"), filepath.Join(conf, ".a.yaml.swp"), single} {
		write(t, f, "x\n")
	}
	w := &Watcher{
		roots: []*root{
			{path: conf, kind: kindDir},
			{path: single, kind: kindFile},
			{path: filepath.Join(tmp, "later", "x.yaml"), kind: kindMissing},
		},
		watched: map[string]bool{conf: true, filepath.Join(conf, "sub"): true, filepath.Join(conf, "gone"): true},
		hidden:  map[string]bool{filepath.Join(conf, "..2024"): true},
	}
	for _, tc := range []struct {
		name           string
		op             fsnotify.Op
		wantRelevant   bool
		wantStructural bool
	}{
		{"conf/a.yaml", fsnotify.Write, true, false},
		{"conf/b.YML", fsnotify.Create, true, false},
		{"conf/c.json", fsnotify.Remove, true, false},
		{"conf/notes.txt", fsnotify.Write, false, false},
		{"conf/.a.yaml.swp", fsnotify.Create, false, false},
		{"conf/..data", fsnotify.Create, true, true},
		{"conf/..2024", fsnotify.Remove, true, true},
		{"conf/..unknown", fsnotify.Remove, false, false},
		{"conf/sub", fsnotify.Create, true, true},
		{"conf/gone", fsnotify.Remove, true, true},
		{"conf/sub/deep.yaml", fsnotify.Write, true, false},
		{"conf", fsnotify.Remove, true, true},
		{"single/tcpmap.yaml", fsnotify.Write, true, false},
		{"single/tcpmap.yaml", fsnotify.Create, true, true},
		{"single/other.yaml", fsnotify.Write, false, false},
		{"later", fsnotify.Create, false, true},
		{"later/x.yaml", fsnotify.Create, true, true},
		{"elsewhere.yaml", fsnotify.Create, false, false},
	} {
		ev := fsnotify.Event{Name: filepath.Join(tmp, tc.name), Op: tc.op}
		gotRelevant, gotStructural := w.classify(ev)
		if gotRelevant != tc.wantRelevant || gotStructural != tc.wantStructural {
			t.Errorf("classify(%s %s) = relevant %v, structural %v; want %v, %v",
				tc.op, tc.name, gotRelevant, gotStructural, tc.wantRelevant, tc.wantStructural)
		}
	}
}
