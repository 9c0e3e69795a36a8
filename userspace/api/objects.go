package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/manager"
)

// maxApplyBody bounds a POST /v1/apply body, as config bounds a file.
const maxApplyBody = 32 << 20

// Objects is the desired state the object endpoints read and change;
// *manager.Manager implements it.
type Objects interface {
	Objects() []config.Resource
	Object(ref config.Ref) (config.Resource, bool)
	ApplyObjects(name string, data []byte) (manager.ApplyResult, error)
	DeleteObject(ref config.Ref) (manager.DeleteResult, error)
	Problems() []config.Problem
}

var _ Objects = (*manager.Manager)(nil)

// kinds maps a kind written in any case to its canonical name, so that
// `/v1/objects/tcpmapping/default/ssh` works.
var kinds = map[string]string{}

func init() {
	for _, k := range []string{config.KindTCPMapping, config.KindTLSContext, config.KindHost, config.KindListener,
		config.KindModule, config.KindSecret} {
		kinds[strings.ToLower(k)] = k
	}
}

func (s *Server) haveObjects(w http.ResponseWriter) bool {
	if s.objects == nil {
		writeError(w, http.StatusServiceUnavailable, "the object API is not enabled in this tcpmapd")
		return false
	}
	return true
}

func refOf(r *http.Request) config.Ref {
	kind := r.PathValue("kind")
	if k, ok := kinds[strings.ToLower(kind)]; ok {
		kind = k
	}
	return config.Ref{Kind: kind, Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}
}

func (s *Server) listObjects(w http.ResponseWriter, r *http.Request) {
	if !s.haveObjects(w) {
		return
	}
	out := []Object{}
	for _, res := range s.objects.Objects() {
		o, err := ObjectOf(res)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		out = append(out, o)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getObject(w http.ResponseWriter, r *http.Request) {
	if !s.haveObjects(w) {
		return
	}
	ref := refOf(r)
	res, ok := s.objects.Object(ref)
	if !ok {
		writeError(w, http.StatusNotFound, ref.String()+" not found")
		return
	}
	o, err := ObjectOf(res)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (s *Server) apply(w http.ResponseWriter, r *http.Request) {
	if !s.haveObjects(w) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxApplyBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("read body: %v", err))
		return
	}
	// The client names the stream (a file name) so problems point into it.
	name := r.URL.Query().Get("file")
	if name == "" {
		name = "request"
	}
	res, err := s.objects.ApplyObjects(name, body)
	var rej *manager.RejectedError
	switch {
	case errors.As(err, &rej):
		e := Error{Error: err.Error(), Problems: []Problem{}}
		for _, p := range rej.Problems {
			e.Problems = append(e.Problems, ProblemOf(p))
		}
		writeJSON(w, http.StatusUnprocessableEntity, e)
		return
	case errors.Is(err, manager.ErrNoStore):
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	case err != nil:
		s.log.Error("apply failed", zap.Error(err))
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := ApplyResult{Objects: []Change{}}
	for _, c := range res.Changes {
		out.Objects = append(out.Objects, Change{Kind: c.Ref.Kind, Namespace: c.Ref.Namespace, Name: c.Ref.Name, Action: c.Action})
	}
	for _, p := range res.Warnings {
		out.Warnings = append(out.Warnings, ProblemOf(p))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) deleteObject(w http.ResponseWriter, r *http.Request) {
	if !s.haveObjects(w) {
		return
	}
	ref := refOf(r)
	res, err := s.objects.DeleteObject(ref)
	var src *manager.SourceError
	switch {
	case errors.As(err, &src):
		writeError(w, http.StatusConflict, err.Error())
		return
	case errors.Is(err, manager.ErrNotFound):
		writeError(w, http.StatusNotFound, ref.String()+" not found")
		return
	case errors.Is(err, manager.ErrNoStore):
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := DeleteResult{Kind: ref.Kind, Namespace: ref.Namespace, Name: ref.Name}
	if res.Shadowed.Source != "" {
		out.Shadowed = res.Shadowed.String()
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) listProblems(w http.ResponseWriter, r *http.Request) {
	out := []Problem{}
	if s.objects != nil {
		for _, p := range s.objects.Problems() {
			out = append(out, ProblemOf(p))
		}
	} else {
		out = append(out, s.backend.Status().Problems...)
	}
	writeJSON(w, http.StatusOK, out)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, Error{Error: msg})
}

// ProblemOf is a configuration problem as the API shows it.
func ProblemOf(p config.Problem) Problem {
	level := "error"
	if p.IsWarning() {
		level = "warning"
	}
	ap := Problem{Level: level, Field: p.Field, Reason: p.Reason, Origin: p.Origin.String(), Message: p.Error()}
	if p.Ref.Kind != "" {
		ap.Resource = p.Ref.String()
		if p.Origin.File == "" && p.Origin.Source != "" {
			ap.Message += " (" + p.Origin.Source + ")"
		}
	}
	return ap
}

// SourceOf is "file:PATH:LINE" for an object from a file, else the
// source's name ("api", "kubernetes").
func SourceOf(o config.Origin) string {
	if o.File != "" {
		return "file:" + o.String()
	}
	return o.Source
}

// ObjectOf renders a loaded resource as the API shows it: the fields as
// tcpmap read them, unset ones left out. A Secret's data is not shown:
// the admin socket is for operating the proxy, not for reading keys.
func ObjectOf(r config.Resource) (Object, error) {
	doc := map[string]any{"apiVersion": r.APIVersion, "kind": r.Ref.Kind, "metadata": r.Meta}
	switch {
	case r.TCPMapping != nil:
		doc["spec"] = r.TCPMapping
	case r.TLSContext != nil:
		doc["spec"] = r.TLSContext
	case r.Host != nil:
		doc["spec"] = r.Host
	case r.Listener != nil:
		doc["spec"] = r.Listener
	case r.Module != nil:
		doc["spec"] = r.Module
	case r.Secret != nil:
		doc["type"] = r.Secret.Type
		data := map[string]string{}
		for k, v := range map[string][]byte{"tls.crt": r.Secret.Cert, "tls.key": r.Secret.Key, "ca.crt": r.Secret.CA} {
			if len(v) > 0 {
				data[k] = fmt.Sprintf("(%d bytes, not shown)", len(v))
			}
		}
		doc["data"] = data
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return Object{}, fmt.Errorf("render %s: %w", r.Ref, err)
	}
	var generic any
	if err := json.Unmarshal(raw, &generic); err != nil {
		return Object{}, fmt.Errorf("render %s: %w", r.Ref, err)
	}
	raw, err = json.Marshal(dropNulls(generic))
	if err != nil {
		return Object{}, fmt.Errorf("render %s: %w", r.Ref, err)
	}
	return Object{Kind: r.Ref.Kind, Namespace: r.Ref.Namespace, Name: r.Ref.Name, Source: SourceOf(r.Origin), Object: raw}, nil
}

// dropNulls removes null members (unset optional fields) from v.
func dropNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if e == nil {
				delete(x, k)
				continue
			}
			x[k] = dropNulls(e)
		}
	case []any:
		for i, e := range x {
			x[i] = dropNulls(e)
		}
	}
	return v
}
