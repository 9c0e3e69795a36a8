package api

import "encoding/json"

// Object is one object of the desired state, from any source.
type Object struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Source is "file:PATH:LINE", "api" or "kubernetes".
	Source string `json:"source"`
	// Object is the resource as tcpmap read it (apiVersion, kind,
	// metadata, spec); a Secret's data is not shown.
	Object json.RawMessage `json:"object"`
}

// Change is what an apply did to one object.
type Change struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Action is "created", "replaced" or "unchanged".
	Action string `json:"action"`
}

// ApplyResult answers an accepted POST /v1/apply.
type ApplyResult struct {
	Objects  []Change  `json:"objects"`
	Warnings []Problem `json:"warnings,omitempty"`
}

// DeleteResult answers an accepted DELETE.
type DeleteResult struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Shadowed names the file whose object of the same name stays in
	// service, when the removed copy clashed with it.
	Shadowed string `json:"shadowed,omitempty"`
}
