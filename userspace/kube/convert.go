package kube

import (
	"encoding/json"
	"fmt"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// SourceName is the Origin.Source of every resource and problem this
// package produces; tcpmapctl status shows it after Kubernetes problems.
const SourceName = "kubernetes"

// lastApplied is kubectl's copy of the whole object in an annotation. It
// holds nothing tcpmap uses and can be large, so it is not passed on.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// keptMeta are the metadata fields a configuration file would hold. The
// rest (uid, resourceVersion, managedFields, ...) is written by the API
// server; leaving it out keeps the strict decoder's input to what a user
// wrote, so its messages are those a file would get.
var keptMeta = []string{"name", "namespace", "labels", "annotations"}

// Clean returns the object as a configuration file would hold it: status
// and server-populated metadata removed, kubectl's last-applied annotation
// dropped. obj is not modified.
func Clean(obj map[string]any) map[string]any {
	out := make(map[string]any, len(obj))
	for k, v := range obj {
		if k == "status" {
			continue
		}
		out[k] = v
	}
	meta, ok := obj["metadata"].(map[string]any)
	if !ok {
		return out // the loader reports the missing metadata
	}
	m := make(map[string]any, len(keptMeta))
	for _, k := range keptMeta {
		v, ok := meta[k]
		if !ok {
			continue
		}
		if k == "annotations" {
			v = withoutLastApplied(v)
			if v == nil {
				continue
			}
		}
		m[k] = v
	}
	out["metadata"] = m
	return out
}

func withoutLastApplied(v any) any {
	ann, ok := v.(map[string]any)
	if !ok {
		return v
	}
	if _, ok := ann[lastApplied]; !ok {
		return v
	}
	out := make(map[string]any, len(ann))
	for k, x := range ann {
		if k != lastApplied {
			out[k] = x
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Convert decodes one object from the API server through the same strict
// loader as a configuration file, so validation and messages are the
// same. Every resource and problem gets Origin{Source: "kubernetes"}: the
// problem already names the resource, and the status shows the source.
func Convert(obj map[string]any) ([]config.Resource, []config.Problem) {
	clean := Clean(obj)
	data, err := json.Marshal(clean)
	name := describe(clean)
	if err != nil {
		return nil, []config.Problem{{Origin: config.Origin{Source: SourceName, File: name},
			Reason: fmt.Sprintf("cannot be encoded as JSON: %v", err), Level: "error"}}
	}
	rs, probs := config.LoadBytes(name, data, config.Origin{Source: SourceName, File: name})
	for i := range rs {
		rs[i].Origin = config.Origin{Source: SourceName}
	}
	for i := range probs {
		if probs[i].Ref.Kind != "" {
			probs[i].Origin = config.Origin{Source: SourceName}
		} else {
			// Without a resource the "file" is all that says which object.
			probs[i].Origin.Line = 0
		}
	}
	return rs, probs
}

// describe is "kubernetes:Kind/namespace/name", naming an object in a
// problem that has no resource to name (it did not parse as one).
func describe(obj map[string]any) string {
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	ns, _ := meta["namespace"].(string)
	name, _ := meta["name"].(string)
	if ns == "" {
		return fmt.Sprintf("%s:%s/%s", SourceName, kind, name)
	}
	return fmt.Sprintf("%s:%s/%s/%s", SourceName, kind, ns, name)
}
