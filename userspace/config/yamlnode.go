package config

import (
	"fmt"
	"math"

	"go.yaml.in/yaml/v3"
)

// Limits on one document, so that a hostile or broken file (a "billion
// laughs" of aliases, a deeply nested flow) costs bounded memory and stack.
const (
	maxDocNodes = 1 << 18
	maxDocDepth = 200
)

// tree turns one YAML node into plain Go values (map[string]any, []any,
// string, int64, uint64, float64, bool) that encoding/json can marshal, and
// remembers on which line each field path was written.
type tree struct {
	lines    map[string]int // field path → line of its key or list item
	problems []fieldProblem // duplicate keys and the like; each rejects the resource
	budget   int            // nodes left before the document is refused
	stopped  bool
}

// fieldProblem is a problem found before the resource's Ref is known.
type fieldProblem struct {
	field  string
	reason string
}

func newTree() *tree {
	return &tree{lines: make(map[string]int), budget: maxDocNodes}
}

// line is the line of path, or of its nearest enclosing field, or 0.
func (t *tree) line(path string) int {
	for {
		if l, ok := t.lines[path]; ok {
			return l
		}
		if path == "" {
			return 0
		}
		path = parentPath(path)
	}
}

func (t *tree) fail(path, reason string) {
	t.problems = append(t.problems, fieldProblem{field: path, reason: reason})
}

// value converts n, found at path. Null values inside objects are dropped,
// as Kubernetes does, so `host: ~` means "no host".
func (t *tree) value(n *yaml.Node, path string, depth int) any {
	if t.stopped {
		return nil
	}
	t.budget--
	if t.budget < 0 {
		t.stopped = true
		t.fail(path, fmt.Sprintf("document is too large (more than %d values after alias expansion)", maxDocNodes))
		return nil
	}
	if depth > maxDocDepth {
		t.stopped = true
		t.fail(path, fmt.Sprintf("document is nested more than %d levels deep", maxDocDepth))
		return nil
	}
	if _, ok := t.lines[path]; !ok {
		t.lines[path] = n.Line
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil
		}
		return t.value(n.Content[0], path, depth+1)
	case yaml.AliasNode:
		if n.Alias == nil {
			return nil
		}
		return t.value(n.Alias, path, depth+1)
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for i, c := range n.Content {
			p := indexPath(path, i)
			t.lines[p] = c.Line
			out = append(out, t.value(c, p, depth+1))
		}
		return out
	case yaml.MappingNode:
		return t.mapping(n, path, depth)
	case yaml.ScalarNode:
		return scalar(n)
	}
	return nil
}

// mapping converts a YAML mapping. Explicit keys win over keys merged in
// with `<<: *anchor`, whatever their order, as YAML's merge key specifies.
func (t *tree) mapping(n *yaml.Node, path string, depth int) map[string]any {
	out := make(map[string]any, len(n.Content)/2)
	seen := make(map[string]bool, len(n.Content)/2)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		kn := deref(k)
		if kn == nil || kn.Kind != yaml.ScalarNode {
			t.fail(path, fmt.Sprintf("line %d: a key must be a string, not a list or an object", k.Line))
			continue
		}
		key := kn.Value
		p := childPath(path, key)
		if seen[key] {
			t.fail(p, fmt.Sprintf("duplicate field (line %d repeats line %d)", k.Line, t.lines[p]))
			continue
		}
		seen[key] = true
		t.lines[p] = k.Line
		if val := t.value(v, p, depth+1); val != nil {
			out[key] = val
		}
	}
	for _, m := range merges {
		t.merge(out, seen, m, path, depth)
	}
	return out
}

// merge copies the keys of a `<<` source (a mapping, or a list of them) that
// out does not already have.
func (t *tree) merge(out map[string]any, seen map[string]bool, src *yaml.Node, path string, depth int) {
	src = deref(src)
	if src == nil {
		return
	}
	switch src.Kind {
	case yaml.SequenceNode:
		for _, c := range src.Content {
			if d := deref(c); d != nil && d.Kind == yaml.MappingNode {
				t.merge(out, seen, d, path, depth+1)
			} else {
				t.fail(path, fmt.Sprintf("line %d: a merge key (<<) takes an object or a list of objects", c.Line))
			}
		}
	case yaml.MappingNode:
		sub := &tree{lines: make(map[string]int), budget: t.budget}
		m := sub.mapping(src, path, depth+1)
		t.budget, t.stopped = sub.budget, sub.stopped
		t.problems = append(t.problems, sub.problems...)
		for k, v := range m {
			if seen[k] {
				continue
			}
			seen[k] = true
			out[k] = v
			p := childPath(path, k)
			t.lines[p] = sub.lines[p]
		}
		for sp, l := range sub.lines {
			if _, ok := t.lines[sp]; !ok {
				t.lines[sp] = l
			}
		}
	default:
		t.fail(path, fmt.Sprintf("line %d: a merge key (<<) takes an object or a list of objects", src.Line))
	}
}

// deref follows aliases, giving up on a chain that loops.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > maxDocDepth {
			return nil
		}
		n = n.Alias
	}
	return n
}

// scalar resolves a scalar the way YAML 1.2's core schema does (yaml.v3's
// behaviour): unquoted 300 is a number, "300" and 'yes' are strings.
// Timestamps stay strings, as JSON has no time type.
func scalar(n *yaml.Node) any {
	switch n.ShortTag() {
	case "!!null":
		return nil
	case "!!bool":
		var b bool
		if n.Decode(&b) == nil {
			return b
		}
	case "!!int":
		var i int64
		if n.Decode(&i) == nil {
			return i
		}
		var u uint64
		if n.Decode(&u) == nil {
			return u
		}
		var f float64
		if n.Decode(&f) == nil && !math.IsInf(f, 0) && !math.IsNaN(f) {
			return f
		}
	case "!!float":
		var f float64
		if n.Decode(&f) == nil && !math.IsInf(f, 0) && !math.IsNaN(f) {
			return f
		}
	}
	return n.Value
}

// scalarField returns the value of key in a mapping node when it is a
// scalar, without converting the rest.
func scalarField(n *yaml.Node, key string) (string, bool) {
	if n == nil || n.Kind != yaml.MappingNode {
		return "", false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k != nil && k.Kind == yaml.ScalarNode && k.Value == key {
			if v != nil && v.Kind == yaml.ScalarNode {
				return v.Value, true
			}
			return "", false
		}
	}
	return "", false
}

// fieldNode returns the value node of key in a mapping node.
func fieldNode(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := deref(n.Content[i]); k != nil && k.Kind == yaml.ScalarNode && k.Value == key {
			return deref(n.Content[i+1])
		}
	}
	return nil
}
