package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadBytes: no input may panic the loader, and every problem must
// name where it comes from.
func FuzzLoadBytes(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.yaml")
	docs, _ := filepath.Glob("testdata/docs/*.yaml")
	for _, p := range append(seeds, docs...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		"", "---", "~", "[", "{", "a: &a [*a]", "<<: 5", "? [a]\n: b",
		"apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/tls\ndata: {tls.crt: AAAA, tls.key: '%%%'}\n",
		"apiVersion: getambassador.io/v3alpha1\nkind: Module\nmetadata: {name: ambassador}\nspec: {config: {cors: 1, foo: 2}}\n",
		"apiVersion: getambassador.io/v2\nkind: TCPMapping\nmetadata: {name: x}\nspec: {port: 1e400, service: s, tls: true}\n",
		"kind: List\napiVersion: v1\nitems: [{kind: List, items: [1]}, 5, ~]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, ps := LoadBytes("fuzz.yaml", data, Origin{Source: "api"})
		for _, p := range ps {
			if p.Reason == "" || p.Origin.File != "fuzz.yaml" {
				t.Errorf("problem without reason or origin: %+v", p)
			}
		}
		for _, r := range rs {
			if r.Ref.Name == "" || r.Ref.Namespace == "" {
				t.Errorf("resource without name: %+v", r.Ref)
			}
		}
	})
}
