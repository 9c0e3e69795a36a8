package config

// FilterByAmbassadorID keeps the resources meant for the installation id
// (Emissary's ambassador_id; an empty one means "default"). Secrets have no
// ambassador_id and are always kept.
func FilterByAmbassadorID(rs []Resource, id string) []Resource {
	out := make([]Resource, 0, len(rs))
	for _, r := range rs {
		if ids, ok := r.AmbassadorID(); ok && !ids.Matches(id) {
			continue
		}
		out = append(out, r)
	}
	return out
}

// Set looks resources up by kind, namespace and name. It points into the
// slice it was built from.
type Set struct {
	byRef  map[Ref]*Resource
	byKind map[string][]*Resource
}

// Index builds a Set over rs. For a repeated Ref (Load never returns one)
// the first wins.
func Index(rs []Resource) *Set {
	s := &Set{byRef: make(map[Ref]*Resource, len(rs)), byKind: make(map[string][]*Resource)}
	for i := range rs {
		r := &rs[i]
		if _, dup := s.byRef[r.Ref]; dup {
			continue
		}
		s.byRef[r.Ref] = r
		s.byKind[r.Ref.Kind] = append(s.byKind[r.Ref.Kind], r)
	}
	return s
}

// Get returns the resource with this kind, namespace and name, or nil.
func (s *Set) Get(kind, namespace, name string) *Resource {
	return s.byRef[Ref{Kind: kind, Namespace: namespace, Name: name}]
}

// Kind returns every resource of a kind, in load order.
func (s *Set) Kind(kind string) []*Resource {
	return s.byKind[kind]
}
