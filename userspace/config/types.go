// Package config reads Emissary-ingress resources (getambassador.io
// TCPMapping, TLSContext, Host, Listener, Module) and Kubernetes TLS
// Secrets from YAML or JSON files, exactly as an Emissary user writes them.
//
// It knows nothing of sockets: its output is a list of typed resources and a
// list of problems, each naming the resource, the field and the reason. The
// resolve package turns the resources into a snapshot.
package config

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Kinds tcpmap understands. The strings are the Kubernetes kind names.
const (
	KindTCPMapping = "TCPMapping"
	KindTLSContext = "TLSContext"
	KindHost       = "Host"
	KindListener   = "Listener"
	KindModule     = "Module"
	KindSecret     = "Secret"
)

// API versions accepted for the getambassador.io kinds. v2 survives in many
// clusters; its TCPMapping `tls` may be a boolean.
const (
	APIVersionV3Alpha1 = "getambassador.io/v3alpha1"
	APIVersionV2       = "getambassador.io/v2"
)

// DefaultNamespace is used when metadata.namespace is empty, as kubectl does.
const DefaultNamespace = "default"

// Ref names one resource: kind, namespace and name. Its String form,
// "TCPMapping default/ssh", starts every problem message.
type Ref struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// NamespacedName is "namespace/name", as Kubernetes writes it and as
// metrics, the admin API and tcpmapctl label a resource.
func (r Ref) NamespacedName() string { return r.Namespace + "/" + r.Name }

func (r Ref) String() string {
	return fmt.Sprintf("%s %s/%s", r.Kind, r.Namespace, r.Name)
}

// Origin says where a resource came from: a file and the line its document
// starts on, or another source (the admin API, Kubernetes).
type Origin struct {
	Source string `json:"source"` // "file", "api", "kubernetes"
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
}

func (o Origin) String() string {
	switch {
	case o.File != "" && o.Line > 0:
		return fmt.Sprintf("%s:%d", o.File, o.Line)
	case o.File != "":
		return o.File
	default:
		return o.Source
	}
}

// ObjectMeta is the part of Kubernetes metadata tcpmap uses. Fields the API
// server fills in (uid, resourceVersion, managedFields, ...) are accepted and
// ignored so that `kubectl get -o yaml` output loads unchanged.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`

	GenerateName               json.RawMessage `json:"generateName,omitempty"`
	UID                        json.RawMessage `json:"uid,omitempty"`
	ResourceVersion            json.RawMessage `json:"resourceVersion,omitempty"`
	Generation                 json.RawMessage `json:"generation,omitempty"`
	CreationTimestamp          json.RawMessage `json:"creationTimestamp,omitempty"`
	DeletionTimestamp          json.RawMessage `json:"deletionTimestamp,omitempty"`
	DeletionGracePeriodSeconds json.RawMessage `json:"deletionGracePeriodSeconds,omitempty"`
	OwnerReferences            json.RawMessage `json:"ownerReferences,omitempty"`
	Finalizers                 json.RawMessage `json:"finalizers,omitempty"`
	ManagedFields              json.RawMessage `json:"managedFields,omitempty"`
	SelfLink                   json.RawMessage `json:"selfLink,omitempty"`
}

// AmbassadorID is Emissary's ambassador_id: a list of installation ids, or a
// single string. Empty means ["default"].
type AmbassadorID []string

// UnmarshalJSON accepts a string or a list of strings.
func (a *AmbassadorID) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = AmbassadorID{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("must be a string or a list of strings")
	}
	*a = many
	return nil
}

// Matches reports whether a resource with this ambassador_id is meant for the
// installation id.
func (a AmbassadorID) Matches(id string) bool {
	if len(a) == 0 {
		return id == "default"
	}
	for _, x := range a {
		if x == id || x == "_automatic_" {
			return true
		}
	}
	return false
}

// IntOrString holds a value that Emissary's CRDs type as a string but users
// commonly write as a number (idle_timeout_ms), or the reverse (port).
type IntOrString struct {
	Value int64
	Set   bool
}

// UnmarshalJSON accepts 300, "300" and "".
func (v *IntOrString) UnmarshalJSON(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "null" {
		return nil
	}
	if unq, err := strconv.Unquote(s); err == nil {
		s = strings.TrimSpace(unq)
		if s == "" {
			return nil
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("must be an integer, got %s", string(b))
	}
	v.Value, v.Set = n, true
	return nil
}

// MarshalJSON writes the number, or null when unset.
func (v IntOrString) MarshalJSON() ([]byte, error) {
	if !v.Set {
		return []byte("null"), nil
	}
	return []byte(strconv.FormatInt(v.Value, 10)), nil
}

// TLSRef is a TCPMapping's `tls`: a TLSContext name (v3alpha1 and v2), or in
// v2 the boolean true meaning "originate TLS without a context".
type TLSRef struct {
	Context   string // TLSContext name, possibly "name.namespace"
	Originate bool   // v2 `tls: true`, or a non-empty Context
}

// UnmarshalJSON accepts a string or a boolean.
func (t *TLSRef) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*t = TLSRef{Context: s, Originate: s != ""}
		return nil
	}
	var on bool
	if err := json.Unmarshal(b, &on); err == nil {
		*t = TLSRef{Originate: on}
		return nil
	}
	return fmt.Errorf("must be a TLSContext name or a boolean")
}

// MarshalJSON writes the context name, or a boolean for v2's `tls: true`.
func (t TLSRef) MarshalJSON() ([]byte, error) {
	if t.Context == "" && t.Originate {
		return []byte("true"), nil
	}
	return json.Marshal(t.Context)
}

// CircuitBreaker is Emissary's circuit breaker, as for HTTP Mappings.
type CircuitBreaker struct {
	Priority           string `json:"priority,omitempty"` // "default" or "high"
	MaxConnections     *int   `json:"max_connections,omitempty"`
	MaxPendingRequests *int   `json:"max_pending_requests,omitempty"`
	MaxRequests        *int   `json:"max_requests,omitempty"`
	MaxRetries         *int   `json:"max_retries,omitempty"`
}

// TCPMappingSpec is the spec of a TCPMapping (v3alpha1, and v2 where `tls`
// may be a boolean).
type TCPMappingSpec struct {
	AmbassadorID    AmbassadorID     `json:"ambassador_id,omitempty"`
	Port            IntOrString      `json:"port"`
	Host            string           `json:"host,omitempty"`
	Address         string           `json:"address,omitempty"`
	Service         string           `json:"service"`
	EnableIPv4      *bool            `json:"enable_ipv4,omitempty"`
	EnableIPv6      *bool            `json:"enable_ipv6,omitempty"`
	CircuitBreakers []CircuitBreaker `json:"circuit_breakers,omitempty"`
	IdleTimeoutMs   IntOrString      `json:"idle_timeout_ms,omitempty"`
	Resolver        string           `json:"resolver,omitempty"`
	TLS             *TLSRef          `json:"tls,omitempty"`
	Weight          *int             `json:"weight,omitempty"`
	ClusterTag      string           `json:"cluster_tag,omitempty"`
	StatsName       string           `json:"stats_name,omitempty"`
}

// TLSContextSpec is the spec of a TLSContext.
type TLSContextSpec struct {
	AmbassadorID          AmbassadorID `json:"ambassador_id,omitempty"`
	Hosts                 []string     `json:"hosts,omitempty"`
	Secret                string       `json:"secret,omitempty"`
	CertChainFile         string       `json:"cert_chain_file,omitempty"`
	PrivateKeyFile        string       `json:"private_key_file,omitempty"`
	CASecret              string       `json:"ca_secret,omitempty"`
	CACertChainFile       string       `json:"cacert_chain_file,omitempty"`
	CRLSecret             string       `json:"crl_secret,omitempty"`
	ALPNProtocols         string       `json:"alpn_protocols,omitempty"` // comma-separated
	CertRequired          *bool        `json:"cert_required,omitempty"`
	MinTLSVersion         string       `json:"min_tls_version,omitempty"` // v1.0 .. v1.3
	MaxTLSVersion         string       `json:"max_tls_version,omitempty"`
	CipherSuites          []string     `json:"cipher_suites,omitempty"` // OpenSSL names, as Envoy takes
	ECDHCurves            []string     `json:"ecdh_curves,omitempty"`
	SecretNamespacing     *bool        `json:"secret_namespacing,omitempty"`
	RedirectCleartextFrom *int         `json:"redirect_cleartext_from,omitempty"`
	SNI                   string       `json:"sni,omitempty"`
}

// HostTLS is a Host's inline `tls`: the TLSContext fields without hosts and
// secret.
type HostTLS struct {
	CertChainFile         string   `json:"cert_chain_file,omitempty"`
	PrivateKeyFile        string   `json:"private_key_file,omitempty"`
	CASecret              string   `json:"ca_secret,omitempty"`
	CACertChainFile       string   `json:"cacert_chain_file,omitempty"`
	CRLSecret             string   `json:"crl_secret,omitempty"`
	ALPNProtocols         string   `json:"alpn_protocols,omitempty"`
	CertRequired          *bool    `json:"cert_required,omitempty"`
	MinTLSVersion         string   `json:"min_tls_version,omitempty"`
	MaxTLSVersion         string   `json:"max_tls_version,omitempty"`
	CipherSuites          []string `json:"cipher_suites,omitempty"`
	ECDHCurves            []string `json:"ecdh_curves,omitempty"`
	SecretNamespacing     *bool    `json:"secret_namespacing,omitempty"`
	RedirectCleartextFrom *int     `json:"redirect_cleartext_from,omitempty"`
	SNI                   string   `json:"sni,omitempty"`
}

// SecretRef is a Host's tlsSecret.
type SecretRef struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// NameRef is a Host's tlsContext.
type NameRef struct {
	Name string `json:"name"`
}

// HostSpec is the spec of a Host. Fields that only matter to HTTP (ACME,
// request policy, selectors) are accepted and not used by a TCP proxy.
type HostSpec struct {
	AmbassadorID    AmbassadorID    `json:"ambassador_id,omitempty"`
	Hostname        string          `json:"hostname,omitempty"` // default "*"
	TLSSecret       *SecretRef      `json:"tlsSecret,omitempty"`
	TLSContext      *NameRef        `json:"tlsContext,omitempty"`
	TLS             *HostTLS        `json:"tls,omitempty"`
	AcmeProvider    json.RawMessage `json:"acmeProvider,omitempty"`
	RequestPolicy   json.RawMessage `json:"requestPolicy,omitempty"`
	Selector        json.RawMessage `json:"selector,omitempty"`
	MappingSelector json.RawMessage `json:"mappingSelector,omitempty"`
	PreviewURL      json.RawMessage `json:"previewUrl,omitempty"`
}

// HostBinding is a Listener's hostBinding; tcpmap accepts it for
// compatibility (it selects HTTP Hosts).
type HostBinding struct {
	Namespace *struct {
		From string `json:"from,omitempty"`
	} `json:"namespace,omitempty"`
	Selector json.RawMessage `json:"selector,omitempty"`
}

// ListenerSpec is the spec of a Listener.
type ListenerSpec struct {
	AmbassadorID  AmbassadorID `json:"ambassador_id,omitempty"`
	Port          IntOrString  `json:"port"`
	Protocol      string       `json:"protocol,omitempty"`      // HTTP, HTTPS, HTTPPROXY, HTTPSPROXY, TCP, TLS
	ProtocolStack []string     `json:"protocolStack,omitempty"` // HTTP, PROXY, TLS, TCP, UDP
	SecurityModel string       `json:"securityModel,omitempty"` // XFP, SECURE, INSECURE
	StatsPrefix   string       `json:"statsPrefix,omitempty"`
	L7Depth       *int         `json:"l7Depth,omitempty"`
	HostBinding   *HostBinding `json:"hostBinding,omitempty"`
}

// ModuleConfig is the part of the `ambassador` Module's config that matters
// to TCP. Other documented Module keys are accepted and reported as unused;
// keys Emissary does not know are an error (see module.go).
type ModuleConfig struct {
	UseProxyProto   *bool            `json:"use_proxy_proto,omitempty"`
	EnableIPv4      *bool            `json:"enable_ipv4,omitempty"`
	EnableIPv6      *bool            `json:"enable_ipv6,omitempty"`
	CircuitBreakers []CircuitBreaker `json:"circuit_breakers,omitempty"`
	Resolver        string           `json:"resolver,omitempty"`
	// Ignored lists the documented Module keys that only affect HTTP.
	Ignored []string `json:"-"`
}

// ModuleSpec is the spec of a Module. Only the Module named `ambassador`
// configures anything.
type ModuleSpec struct {
	AmbassadorID AmbassadorID `json:"ambassador_id,omitempty"`
	Config       ModuleConfig `json:"config"`
}

// SecretData is the content of a kubernetes.io/tls Secret after base64
// decoding of `data` and merging of `stringData` (stringData wins, as in
// Kubernetes).
type SecretData struct {
	Type string
	Cert []byte // tls.crt, PEM
	Key  []byte // tls.key, PEM
	CA   []byte // ca.crt, PEM, optional
}

// Resource is one loaded resource of any supported kind. Exactly one of the
// typed spec pointers is set, matching Ref.Kind.
type Resource struct {
	Ref        Ref
	APIVersion string
	Meta       ObjectMeta
	Origin     Origin

	TCPMapping *TCPMappingSpec
	TLSContext *TLSContextSpec
	Host       *HostSpec
	Listener   *ListenerSpec
	Module     *ModuleSpec
	Secret     *SecretData
}

// AmbassadorID returns the resource's ambassador_id; Secrets have none and
// belong to every installation.
func (r *Resource) AmbassadorID() (AmbassadorID, bool) {
	switch {
	case r.TCPMapping != nil:
		return r.TCPMapping.AmbassadorID, true
	case r.TLSContext != nil:
		return r.TLSContext.AmbassadorID, true
	case r.Host != nil:
		return r.Host.AmbassadorID, true
	case r.Listener != nil:
		return r.Listener.AmbassadorID, true
	case r.Module != nil:
		return r.Module.AmbassadorID, true
	}
	return nil, false
}

// Problem is one rejected or discarded resource, or a file that does not
// parse. Its message names the resource, the field and the reason.
type Problem struct {
	Ref    Ref    `json:"ref"`             // empty Kind for a file-level problem
	Origin Origin `json:"origin"`          // file:line when known
	Field  string `json:"field,omitempty"` // e.g. "spec.port"
	Reason string `json:"reason"`          // lower case, no trailing period
	Level  string `json:"level,omitempty"` // "error" (default) or "warning"
}

func (p Problem) Error() string {
	var b strings.Builder
	if p.Ref.Kind != "" {
		b.WriteString(p.Ref.String())
		b.WriteString(": ")
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Reason)
	if o := p.Origin.String(); o != "" && (p.Origin.File != "" || p.Ref.Kind == "") {
		b.WriteString(" (")
		b.WriteString(o)
		b.WriteString(")")
	}
	return b.String()
}

// IsWarning reports whether the problem leaves the resource in service.
func (p Problem) IsWarning() bool { return p.Level == "warning" }
