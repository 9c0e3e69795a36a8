package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// Split cuts a YAML or JSON stream, as the admin API receives it, into one
// YAML document per object, keyed by kind, namespace and name. Lists (kind
// List, as kubectl prints) and top-level sequences are flattened, as
// config.Load does. Documents that are not objects are skipped: the caller
// validates the stream with config.LoadBytes first.
func Split(data []byte) (map[config.Ref][]byte, error) {
	out := make(map[config.Ref][]byte)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("split objects: %w", err)
		}
		if len(doc.Content) == 0 {
			continue
		}
		if err := splitNode(doc.Content[0], 0, out); err != nil {
			return nil, err
		}
	}
}

func splitNode(n *yaml.Node, depth int, out map[config.Ref][]byte) error {
	switch n.Kind {
	case yaml.SequenceNode:
		if depth == 0 {
			for _, c := range n.Content {
				if err := splitNode(c, depth+1, out); err != nil {
					return err
				}
			}
		}
		return nil
	case yaml.MappingNode:
	default:
		return nil
	}
	kind := scalar(field(n, "kind"))
	if items := field(n, "items"); depth == 0 && items != nil && items.Kind == yaml.SequenceNode && strings.HasSuffix(kind, "List") {
		for _, c := range items.Content {
			if err := splitNode(c, depth+1, out); err != nil {
				return err
			}
		}
		return nil
	}
	ref := config.Ref{Kind: kind}
	if meta := field(n, "metadata"); meta != nil {
		ref.Name, ref.Namespace = scalar(field(meta, "name")), scalar(field(meta, "namespace"))
	}
	if ref.Namespace == "" {
		ref.Namespace = config.DefaultNamespace
	}
	doc, err := marshalDoc(n)
	if err != nil {
		return fmt.Errorf("%s: %w", ref, err)
	}
	out[ref] = doc
	return nil
}

// marshalDoc writes one object in block style. A document with aliases is
// written through a generic value so that no alias points at an anchor in
// another document.
func marshalDoc(n *yaml.Node) ([]byte, error) {
	var v any = n
	if hasAlias(n) {
		var generic any
		if err := n.Decode(&generic); err != nil {
			return nil, err
		}
		v = generic
	} else {
		blockStyle(n)
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func hasAlias(n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode {
		return true
	}
	for _, c := range n.Content {
		if hasAlias(c) {
			return true
		}
	}
	return false
}

// blockStyle turns JSON's flow style and quotes into YAML's block style,
// for people reading the state directory. The encoder still quotes a
// string that would otherwise read as another type ("2222").
func blockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle
	if n.Kind == yaml.ScalarNode && n.Style == yaml.DoubleQuotedStyle {
		n.Style = 0
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

func field(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func scalar(n *yaml.Node) string {
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}
