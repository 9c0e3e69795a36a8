package config

import (
	"encoding/json"
	"fmt"
	"strings"
)

// object is the generic top level of a getambassador.io resource. status is
// accepted and ignored so that `kubectl get -o yaml` output loads.
type object[S any] struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   ObjectMeta      `json:"metadata"`
	Spec       S               `json:"spec"`
	Status     json.RawMessage `json:"status,omitempty"`
}

// secretObject is a v1 Secret.
type secretObject struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   ObjectMeta        `json:"metadata"`
	Type       string            `json:"type,omitempty"`
	Data       map[string]string `json:"data,omitempty"`
	StringData map[string]string `json:"stringData,omitempty"`
	Immutable  *bool             `json:"immutable,omitempty"`
}

// docCtx collects the problems of one document.
type docCtx struct {
	ref    Ref
	origin Origin // Line is where the document starts
	tree   *tree
	probs  []Problem
	errors int
	bad    map[string]bool // fields that did not decode
}

func (d *docCtx) problem(field, reason, level string) {
	if level != "warning" && d.covered(field) {
		return
	}
	o := d.origin
	if l := d.tree.line(field); l > 0 {
		o.Line = l
	}
	d.probs = append(d.probs, Problem{Ref: d.ref, Origin: o, Field: field, Reason: reason, Level: level})
	if level != "warning" {
		d.errors++
	}
}

// covered reports whether field, or a field holding it, already failed to
// decode.
func (d *docCtx) covered(field string) bool {
	for f := field; f != ""; f = parentPath(f) {
		if d.bad[f] {
			return true
		}
	}
	return false
}

// errorf records an error that rejects the resource.
func (d *docCtx) errorf(field, format string, args ...any) {
	d.problem(field, fmt.Sprintf(format, args...), "error")
}

// warnf records a warning; the resource stays.
func (d *docCtx) warnf(field, format string, args ...any) {
	d.problem(field, fmt.Sprintf(format, args...), "warning")
}

func (d *docCtx) addAll(ps []fieldProblem) {
	for _, p := range ps {
		d.errorf(p.field, "%s", p.reason)
	}
}

// ambassadorKinds are the getambassador.io kinds tcpmap reads.
var ambassadorKinds = map[string]bool{
	KindTCPMapping: true,
	KindTLSContext: true,
	KindHost:       true,
	KindListener:   true,
	KindModule:     true,
}

// object dispatches one document on apiVersion and kind, decodes it
// strictly, validates it and keeps it when it has no error.
func (l *loader) object(obj map[string]any, t *tree, origin Origin) {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	ns, _ := meta["namespace"].(string)
	if ns == "" {
		ns = DefaultNamespace
	}
	d := &docCtx{ref: Ref{Kind: kind, Namespace: ns, Name: name}, origin: origin, tree: t, bad: make(map[string]bool)}
	defer func() { l.problems = append(l.problems, d.probs...) }()

	if t.stopped { // too large or too deep: what was read is incomplete
		d.addAll(t.problems)
		return
	}

	if obj["kind"] == nil && obj["apiVersion"] == nil {
		d.errorf("", "document is not a Kubernetes resource: it has no apiVersion and no kind")
		return
	}
	if kind == "" || apiVersion == "" {
		for _, f := range []string{"apiVersion", "kind"} {
			switch v := obj[f].(type) {
			case nil:
				d.errorf(f, "required")
			case string:
				if v == "" {
					d.errorf(f, "must not be empty")
				}
			default:
				d.errorf(f, "must be a string, got %s", describe(v))
			}
		}
		return
	}

	switch {
	case apiVersion == "v1" && kind == KindSecret:
	case apiVersion == "v1":
		return // Services, ConfigMaps, ... sit next to tcpmap resources; no news
	case ambassadorKinds[kind] && (strings.HasPrefix(apiVersion, "getambassador.io/") || strings.HasPrefix(apiVersion, "ambassador/")):
		if apiVersion != APIVersionV3Alpha1 && apiVersion != APIVersionV2 {
			d.errorf("apiVersion", "%s is not supported for %s; use %s or %s", apiVersion, kind, APIVersionV3Alpha1, APIVersionV2)
			return
		}
		if kind == KindListener && apiVersion != APIVersionV3Alpha1 {
			d.errorf("apiVersion", "Listener exists only in %s", APIVersionV3Alpha1)
			return
		}
	default:
		d.warnf("", "%s %s is not used by tcpmap; skipped", apiVersion, kind)
		return
	}

	if kind == KindModule && name != "ambassador" {
		d.warnf("metadata.name", "only the Module named ambassador configures tcpmap; skipped")
		return
	}
	if kind == KindSecret {
		if typ, _ := obj["type"].(string); !secretTypeUsed(typ) {
			d.warnf("type", "Secret of type %s is not used by tcpmap (want kubernetes.io/tls or Opaque); skipped", typ)
			return
		}
		if !secretHasTLSKeys(obj) {
			d.warnf("", "Opaque Secret holds neither tls.crt nor ca.crt; not used by tcpmap; skipped")
			return
		}
	}

	d.addAll(t.problems)
	r := Resource{Ref: d.ref, APIVersion: apiVersion, Origin: origin}
	switch kind {
	case KindTCPMapping:
		if tls, ok := lookup(obj, "spec", "tls").(bool); ok && apiVersion == APIVersionV3Alpha1 {
			d.errorf("spec.tls", "must be the name of a TLSContext in %s, got boolean %t (boolean tls exists only in %s; use service: https://... to originate TLS without a TLSContext)", apiVersion, tls, APIVersionV2)
		}
		var o object[TCPMappingSpec]
		if decodeInto(d, obj, &o) {
			r.Meta, r.TCPMapping = o.Metadata, &o.Spec
			validateTCPMapping(d, &o.Spec)
		}
	case KindTLSContext:
		var o object[TLSContextSpec]
		if decodeInto(d, obj, &o) {
			r.Meta, r.TLSContext = o.Metadata, &o.Spec
			validateTLSContext(d, &o.Spec)
		}
	case KindHost:
		var o object[HostSpec]
		if decodeInto(d, obj, &o) {
			r.Meta, r.Host = o.Metadata, &o.Spec
			validateHost(d, &o.Spec)
		}
	case KindListener:
		var o object[ListenerSpec]
		if decodeInto(d, obj, &o) {
			r.Meta, r.Listener = o.Metadata, &o.Spec
			validateListener(d, &o.Spec)
		}
	case KindModule:
		ignored := takeHTTPOnlyModuleKeys(obj)
		for _, k := range ignored {
			d.warnf(childPath("spec.config", k), "only affects HTTP; ignored by tcpmap")
		}
		var o object[ModuleSpec]
		if decodeInto(d, obj, &o) {
			o.Spec.Config.Ignored = ignored
			r.Meta, r.Module = o.Metadata, &o.Spec
			validateModule(d, &o.Spec)
		}
	case KindSecret:
		var o secretObject
		if decodeInto(d, obj, &o) {
			r.Meta = o.Metadata
			r.Secret = secretData(d, &o)
		}
	}
	if r.Meta.Namespace == "" {
		r.Meta.Namespace = DefaultNamespace
	}
	validateMeta(d, meta)

	if name != "" {
		if first, ok := l.seen[d.ref]; ok {
			d.errorf("metadata.name", "duplicate %s name in namespace %s; first defined at %s", kind, ns, first)
		} else {
			l.seen[d.ref] = origin
		}
	}
	if d.errors == 0 {
		l.resources = append(l.resources, r)
	}
}

// decodeInto decodes strictly and reports whether into may be validated.
// Fields that did not decode are remembered, so that validation does not
// add "required" to "must be an integer" for the same field.
func decodeInto(d *docCtx, obj map[string]any, into any) bool {
	probs, ok := decodeStrict(obj, into)
	d.addAll(probs)
	for _, p := range probs {
		d.bad[p.field] = true
	}
	return ok
}

// lookup walks nested objects of a generic document.
func lookup(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}
