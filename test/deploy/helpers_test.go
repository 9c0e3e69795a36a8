package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/tcpmap/tcpmap/userspace/daemon"
)

// repoRoot is the module root: the tests run in test/deploy.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// skipOrFail skips with msg, or fails under CI=true, where a skipped test
// would hide a broken artifact.
func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI=true, so a skip counts as a failure")
	}
	t.Skip(msg)
}

// parseDaemonArgs parses args with tcpmapd's own flag set and validates the
// result as tcpmapd's main does. Flags main adds itself (--log-level,
// --log-format) are deliberately unknown here: the artifacts do not use
// them, so that the daemon package alone defines what they may pass.
func parseDaemonArgs(args []string) (daemon.Options, error) {
	var o daemon.Options
	fs := pflag.NewFlagSet("tcpmapd", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o, fmt.Errorf("parse %q: %w", args, err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("parse %q: unexpected argument %q", args, fs.Arg(0))
	}
	if err := o.Validate(); err != nil {
		return o, fmt.Errorf("validate %q: %w", args, err)
	}
	return o, nil
}

// document is one YAML document of a manifest file.
type document struct {
	File  string // relative to the manifest root
	Index int    // 0-based position in the file
	Kind  string
	Data  []byte
}

func (d document) String() string { return fmt.Sprintf("%s#%d (%s)", d.File, d.Index, d.Kind) }

// readDocuments reads every YAML document of every *.yaml/*.yml file under
// root, in lexical order. Empty documents (comments only) are dropped.
func readDocuments(t testing.TB, root string) []document {
	t.Helper()
	var docs []document
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !isYAML(path) {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for i := 0; ; i++ {
			chunk, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
			var head struct {
				Kind string `json:"kind"`
			}
			if err := yaml.Unmarshal(chunk, &head); err != nil {
				return fmt.Errorf("%s#%d: %w", rel, i, err)
			}
			if head.Kind == "" && len(bytes.TrimSpace(stripComments(chunk))) == 0 {
				continue
			}
			docs = append(docs, document{File: rel, Index: i, Kind: head.Kind, Data: chunk})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func isYAML(path string) bool {
	ext := filepath.Ext(path)
	return ext == ".yaml" || ext == ".yml"
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' && string(t) != "---" {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

// envRef matches Kubernetes' $(VAR) interpolation in args.
var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandArgs replaces $(VAR) in args as the kubelet does, with values from
// vars; a reference to an undefined variable is an error here, while the
// kubelet would pass it through literally and the daemon would get garbage.
func expandArgs(args []string, vars map[string]string) ([]string, error) {
	out := make([]string, len(args))
	for i, a := range args {
		var missing []string
		out[i] = envRef.ReplaceAllStringFunc(a, func(ref string) string {
			name := envRef.FindStringSubmatch(ref)[1]
			v, ok := vars[name]
			if !ok {
				missing = append(missing, name)
			}
			return v
		})
		if len(missing) > 0 {
			return nil, fmt.Errorf("arg %q: $(%s) is not defined in the container's env", a, strings.Join(missing, ", $("))
		}
	}
	return out, nil
}

// underDir reports whether path is dir or lies below it.
func underDir(path, dir string) bool {
	path, dir = filepath.Clean(path), filepath.Clean(dir)
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}
