package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"

	"github.com/tcpmap/tcpmap/userspace/api"
)

// WriteObjects prints objects as a table, one row each, in the order given.
func WriteObjects(w io.Writer, objs []api.Object) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tPORT\tHOST\tSERVICE\tSOURCE")
	for _, o := range objs {
		port, host, service := columns(o)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", o.Kind, o.Namespace, o.Name, port, host, service, o.Source)
	}
	return tw.Flush()
}

// columns picks PORT, HOST and SERVICE from the object's spec: a
// TCPMapping's port, host and service, a Listener's port, a Host's
// hostname; "-" where the kind has none.
func columns(o api.Object) (port, host, service string) {
	var doc struct {
		Spec map[string]any `json:"spec"`
	}
	_ = json.Unmarshal(o.Object, &doc)
	str := func(keys ...string) string {
		for _, k := range keys {
			switch v := doc.Spec[k].(type) {
			case string:
				if v != "" {
					return v
				}
			case float64:
				return strconv.FormatFloat(v, 'f', -1, 64)
			}
		}
		return "-"
	}
	return str("port"), str("host", "hostname"), str("service")
}

// WriteObjectsYAML prints objects as a YAML stream that `tcpmapctl apply`
// reads back, each document headed by a comment naming its source.
func WriteObjectsYAML(w io.Writer, objs []api.Object) error {
	for i, o := range objs {
		if i > 0 {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return err
			}
		}
		if err := WriteObjectYAML(w, o); err != nil {
			return err
		}
	}
	return nil
}

// WriteObjectYAML prints one object as YAML, headed by its source.
func WriteObjectYAML(w io.Writer, o api.Object) error {
	var n yaml.Node
	// JSON is YAML: decoding into a node keeps the daemon's key order.
	if err := yaml.Unmarshal(o.Object, &n); err != nil {
		return fmt.Errorf("%s %s/%s: %w", o.Kind, o.Namespace, o.Name, err)
	}
	blockStyle(&n)
	if len(n.Content) > 0 {
		n.Content[0].HeadComment = "source: " + o.Source
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return err
	}
	return enc.Close()
}

func blockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle
	if n.Kind == yaml.ScalarNode && n.Style == yaml.DoubleQuotedStyle {
		n.Style = 0 // the encoder quotes what needs quoting
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// WriteJSON prints v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// WriteApplyResult prints one line per applied object, then warnings.
func WriteApplyResult(w io.Writer, r api.ApplyResult) {
	for _, c := range r.Objects {
		fmt.Fprintf(w, "%s %s/%s %s\n", c.Kind, c.Namespace, c.Name, c.Action)
	}
	WriteProblems(w, r.Warnings)
}

// WriteProblems prints one line per problem: "error: ..." or
// "warning: ...".
func WriteProblems(w io.Writer, ps []api.Problem) {
	for _, p := range ps {
		level := p.Level
		if level == "" {
			level = "error"
		}
		fmt.Fprintf(w, "%s: %s\n", level, p.Message)
	}
}
