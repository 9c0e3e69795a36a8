package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxFileSize bounds one configuration file; real ones are kilobytes.
const maxFileSize = 32 << 20

// Load reads every resource from paths. Each path is a file, read whatever
// its name, or a directory, read recursively for *.yaml, *.yml and *.json
// files in sorted order, skipping hidden files and directories (so that the
// `..data` links of a mounted ConfigMap are read once, through the visible
// names). Symbolic links are followed; a file reached twice is read once.
//
// The result holds only resources that passed every per-resource check; a
// resource with any error-level problem is left out whole. Problems lists
// the rejected resources, the skipped ones (warnings) and the files that did
// not parse, in the order they were read.
func Load(paths []string) ([]Resource, []Problem) {
	l := newLoader()
	visited := make(map[string]bool)
	for _, p := range paths {
		files, probs := listFiles(p, visited)
		l.problems = append(l.problems, probs...)
		for _, f := range files {
			l.loadFile(f)
		}
	}
	return l.resources, l.problems
}

// LoadBytes reads every resource from one YAML or JSON stream, such as a
// request body of the admin API. file names the stream in problems; origin
// gives its Source ("api", "kubernetes", ...). Names must be unique within
// the stream, as in Load.
func LoadBytes(file string, data []byte, origin Origin) ([]Resource, []Problem) {
	l := newLoader()
	if origin.File == "" {
		origin.File = file
	}
	if origin.Source == "" {
		origin.Source = "file"
	}
	origin.Line = 0
	l.loadStream(data, origin)
	return l.resources, l.problems
}

// listFiles expands one path into the files to read.
func listFiles(root string, visited map[string]bool) ([]string, []Problem) {
	fileProblem := func(path string, err error) Problem {
		return Problem{Origin: Origin{Source: "file", File: path}, Reason: err.Error(), Level: "error"}
	}
	info, err := os.Stat(root)
	if err != nil {
		return nil, []Problem{fileProblem(root, unwrapPathError(err))}
	}
	if !info.IsDir() {
		if real, err := filepath.EvalSymlinks(root); err == nil {
			if visited[real] {
				return nil, nil
			}
			visited[real] = true
		}
		return []string{root}, nil
	}
	var files []string
	var probs []Problem
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			probs = append(probs, fileProblem(dir, unwrapPathError(err)))
			return
		}
		if visited[real] || depth > 64 {
			return
		}
		visited[real] = true
		entries, err := os.ReadDir(dir)
		if err != nil {
			probs = append(probs, fileProblem(dir, unwrapPathError(err)))
			return
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, ".") {
				continue
			}
			p := filepath.Join(dir, name)
			info, err := os.Stat(p) // follows symbolic links
			if err != nil {
				probs = append(probs, fileProblem(p, unwrapPathError(err)))
				continue
			}
			switch {
			case info.IsDir():
				walk(p, depth+1)
			case info.Mode().IsRegular() && configExt(name):
				rp, err := filepath.EvalSymlinks(p)
				if err != nil || visited[rp] {
					continue
				}
				visited[rp] = true
				files = append(files, p)
			}
		}
	}
	walk(root, 0)
	return files, probs
}

func configExt(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// unwrapPathError keeps "no such file or directory" rather than Go's
// "stat x: no such file or directory", since the problem names the file.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// loader accumulates resources and problems over several streams, and
// remembers names to reject duplicates across files.
type loader struct {
	resources []Resource
	problems  []Problem
	seen      map[Ref]Origin
}

func newLoader() *loader {
	return &loader{seen: make(map[Ref]Origin)}
}

func (l *loader) loadFile(path string) {
	origin := Origin{Source: "file", File: path}
	f, err := os.Open(path)
	if err != nil {
		l.problems = append(l.problems, Problem{Origin: origin, Reason: unwrapPathError(err).Error(), Level: "error"})
		return
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		l.problems = append(l.problems, Problem{Origin: origin, Reason: unwrapPathError(err).Error(), Level: "error"})
		return
	}
	if len(data) > maxFileSize {
		l.problems = append(l.problems, Problem{Origin: origin, Reason: fmt.Sprintf("file is larger than %d MiB; not read", maxFileSize>>20), Level: "error"})
		return
	}
	l.loadStream(data, origin)
}

// loadStream reads a multi-document stream. Documents are split at their
// `---` lines before parsing, so that a document that does not parse is
// reported with its line and the documents after it are still read.
func (l *loader) loadStream(data []byte, origin Origin) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	for _, c := range splitDocuments(data) {
		l.loadChunk(c, origin)
	}
}

// chunk is the text of one document (rarely several, after a `...` end
// marker) and the line it starts on in its file.
type chunk struct {
	text []byte
	line int
}

// splitDocuments cuts a stream at lines that start with the `---` document
// marker. YAML forbids such a line inside any scalar, so the cut is exact.
func splitDocuments(data []byte) []chunk {
	var out []chunk
	start, startLine := 0, 1
	line := 1
	for i := 0; i < len(data); {
		end := bytes.IndexByte(data[i:], '\n')
		next := len(data)
		if end >= 0 {
			next = i + end + 1
		}
		if i > start && isDocMarker(data[i:next]) {
			out = append(out, chunk{text: data[start:i], line: startLine})
			start, startLine = i, line
		}
		i = next
		line++
	}
	return append(out, chunk{text: data[start:], line: startLine})
}

func isDocMarker(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	rest := line[3:]
	return len(rest) == 0 || rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\n' || rest[0] == '\r'
}

var yamlLineRE = regexp.MustCompile(`^line (\d+)`)

// yamlParserProblems are the messages of yaml.v3's parser (parserc.go), as
// opposed to its scanner: their line is 0-based, and omitted on the first
// line.
var yamlParserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"did not find expected node content":     true,
	"did not find expected key":              true,
	"did not find expected '-' indicator":    true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found duplicate %TAG directive":         true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// loadChunk parses one chunk and hands each document to loadNode.
func (l *loader) loadChunk(c chunk, origin Origin) {
	dec := yaml.NewDecoder(bytes.NewReader(c.text))
	for {
		var doc yaml.Node
		err := decodeNode(dec, &doc)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			o := origin
			o.Line = c.line
			reason := strings.TrimPrefix(err.Error(), "yaml: ")
			// Lines in yaml.v3's messages count from the chunk; make them
			// count from the file and move the first one into Origin.
			if m := yamlLineRE.FindStringSubmatchIndex(reason); m != nil && m[0] == 0 {
				n, _ := strconv.Atoi(reason[m[2]:m[3]])
				reason = strings.TrimPrefix(reason[m[1]:], ": ")
				if yamlParserProblems[reason] {
					n++ // yaml.v3 counts these lines from 0, scanner lines from 1
				}
				o.Line = c.line + n - 1
			}
			l.problems = append(l.problems, Problem{Origin: o, Reason: "YAML does not parse: " + reason + "; the rest of this document is not read", Level: "error"})
			return
		}
		if len(doc.Content) == 0 {
			continue // empty document, e.g. a trailing `---`
		}
		shiftLines(&doc, c.line-1)
		l.loadNode(doc.Content[0], origin, 0)
	}
}

// decodeNode guards against a panic inside the YAML parser: a broken file
// must never take the daemon down.
func decodeNode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: parser failed: %v", r)
		}
	}()
	return dec.Decode(n)
}

// shiftLines makes node lines count from the start of the file.
func shiftLines(n *yaml.Node, by int) {
	if by == 0 {
		return
	}
	stack := []*yaml.Node{n}
	for len(stack) > 0 {
		x := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if x.Line > 0 {
			x.Line += by
		}
		stack = append(stack, x.Content...) // aliases point at nodes also reached here
	}
}

// loadNode handles one document's root: a resource, a Kubernetes List (as
// `kubectl get -o yaml` prints several resources) or a plain list of
// resources.
func (l *loader) loadNode(n *yaml.Node, origin Origin, depth int) {
	n = deref(n)
	if n == nil {
		return
	}
	origin.Line = n.Line
	switch n.Kind {
	case yaml.SequenceNode:
		if depth > 0 {
			break
		}
		for _, c := range n.Content {
			l.loadNode(c, origin, depth+1)
		}
		return
	case yaml.MappingNode:
		kind, _ := scalarField(n, "kind")
		if items := fieldNode(n, "items"); depth == 0 && items != nil && items.Kind == yaml.SequenceNode &&
			(kind == "List" || strings.HasSuffix(kind, "List")) {
			for _, c := range items.Content {
				l.loadNode(c, origin, depth+1)
			}
			return
		}
		t := newTree()
		obj, _ := t.value(n, "", 0).(map[string]any)
		if obj == nil {
			obj = map[string]any{}
		}
		l.object(obj, t, origin)
		return
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return // a document holding only `~` or comments
		}
	}
	l.problems = append(l.problems, Problem{Origin: origin, Reason: "document is not a Kubernetes resource (an object with apiVersion, kind and metadata)", Level: "error"})
}
