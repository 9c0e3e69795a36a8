// Package kube is the Kubernetes source of tcpmap: it watches the
// getambassador.io resources (TCPMapping, TLSContext, Host, Listener,
// Module) and the Secrets they name with client-go informers (one for the
// kubernetes.io/tls Secrets, and one per name for any other Secret a
// resource names, such as an Opaque ca_secret), hands them to the manager
// through the same strict loader as a configuration file, and publishes
// each resource's outcome as an Event.
//
// A kind whose CRD is not installed is served as empty: the API server's
// discovery says which kinds it serves, and the informer of a missing
// kind starts when its CRD appears (discovery.go).
//
// It never blocks the manager on the network: Resources reads the
// informers' caches. When the API server is away the reflectors retry with
// backoff and the caches keep the last copy, so tcpmap keeps serving it.
package kube

import (
	"context"
	"encoding/base64"
	"fmt"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// Group and Version of the resources watched. v3alpha1 is Emissary's
// storage version; an API server that also serves v2 converts.
const (
	Group   = "getambassador.io"
	Version = "v3alpha1"
)

// Kinds are the getambassador.io kinds watched, with their resource
// (plural) names, in the order they are read.
var Kinds = []struct{ Kind, Resource string }{
	{config.KindTCPMapping, "tcpmappings"},
	{config.KindTLSContext, "tlscontexts"},
	{config.KindHost, "hosts"},
	{config.KindListener, "listeners"},
	{config.KindModule, "modules"},
}

// DefaultDebounce is how long OnChange waits for a burst of changes (a
// `kubectl apply` of many objects) to settle.
const DefaultDebounce = 200 * time.Millisecond

// secretSyncTimeout bounds how long a change waits for the first list of
// the Secrets it newly names before the reload runs without them.
const secretSyncTimeout = 5 * time.Second

// errorLogEvery bounds the warnings of one informer while the API server
// is away; the reflector retries far more often.
const errorLogEvery = 30 * time.Second

// Options configure a Source.
type Options struct {
	// Dynamic reads the getambassador.io resources; Clientset reads the
	// Secrets and writes Events.
	Dynamic   dynamic.Interface
	Clientset kubernetes.Interface
	// Discovery says which kinds the API server serves; nil means
	// Clientset's.
	Discovery discovery.DiscoveryInterface
	// Recheck is how often discovery is asked again while a kind's CRD is
	// missing; zero means DefaultRecheck. Every reload asks too, at most
	// once a second.
	Recheck time.Duration
	// Namespace limits the watch to one namespace; empty watches all.
	Namespace string
	// OnChange is called, debounced, after the watched objects changed.
	OnChange func()
	// Debounce is the quiet time before OnChange; zero means
	// DefaultDebounce.
	Debounce time.Duration
	// Recorder emits the Events; nil builds one that writes through
	// Clientset with source Component/Host.
	Recorder  record.EventRecorder
	Component string // default "tcpmap"
	Host      string // the node, shown as the Event's source host
	Logger    *zap.Logger
}

// Source is the Kubernetes source of the manager (manager.Source).
type Source struct {
	opts Options
	log  *zap.Logger

	disc    discovery.DiscoveryInterfaceWithContext
	dyn     dynamicinformer.DynamicSharedInformerFactory
	typed   informers.SharedInformerFactory
	secrets cache.SharedIndexInformer // the kubernetes.io/tls Secrets

	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder

	kick       chan struct{}
	rediscover chan struct{}   // a reload asks discovery again
	discovered chan struct{}   // closed once discovery has answered
	ctx        context.Context // Start's, parent of the per-name Secret watches; guarded by mu
	cancel     context.CancelFunc
	done       chan struct{}
	wg         sync.WaitGroup // the discovery loop and the per-name Secret watches

	mu       sync.Mutex
	kinds    map[string]cache.SharedIndexInformer // the started informers of the getambassador.io kinds
	missing  map[string]bool                      // kinds discovery does not list (CRD not installed)
	external map[string][]secretUse               // Secrets the other sources name (Referenced)
	pub      published
	errLogs  map[string]time.Time
	watches  map[string]*secretWatch // by "namespace/name"
}

// New prepares the informers; nothing talks to the API server before
// Start.
func New(opts Options) (*Source, error) {
	if opts.Dynamic == nil || opts.Clientset == nil {
		return nil, fmt.Errorf("kubernetes source: a dynamic client and a clientset are required")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.Component == "" {
		opts.Component = "tcpmap"
	}
	if opts.Recheck <= 0 {
		opts.Recheck = DefaultRecheck
	}
	if opts.Discovery == nil {
		opts.Discovery = opts.Clientset.Discovery()
	}
	s := &Source{
		opts:       opts,
		log:        opts.Logger,
		disc:       discovery.ToDiscoveryInterfaceWithContext(opts.Discovery),
		kick:       make(chan struct{}, 1),
		rediscover: make(chan struct{}, 1),
		discovered: make(chan struct{}),
		kinds:      make(map[string]cache.SharedIndexInformer),
		missing:    make(map[string]bool),
		errLogs:    make(map[string]time.Time),
		watches:    make(map[string]*secretWatch),
		recorder:   opts.Recorder,
	}
	// No periodic resync: the caches are complete and a resync would only
	// cause reloads that change nothing. The informers of the kinds are
	// made once discovery lists them (startKinds).
	s.dyn = dynamicinformer.NewFilteredDynamicSharedInformerFactory(opts.Dynamic, 0, opts.Namespace, nil)
	// Only TLS Secrets, selected by the API server: tcpmap has no business
	// caching a cluster's other Secrets. The few others a resource names
	// get a watch of their own, by name (watchSecrets).
	s.typed = informers.NewSharedInformerFactoryWithOptions(opts.Clientset, 0,
		informers.WithNamespace(opts.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "type=" + string(corev1.SecretTypeTLS)
		}))
	s.secrets = s.typed.Core().V1().Secrets().Informer()
	if err := s.observe(config.KindSecret, s.secrets); err != nil {
		return nil, fmt.Errorf("kubernetes source: %w", err)
	}
	if s.recorder == nil {
		s.broadcaster = record.NewBroadcaster()
		s.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: opts.Clientset.CoreV1().Events("")})
		s.recorder = s.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: opts.Component, Host: opts.Host})
	}
	return s, nil
}

// observe prepares an informer before it runs: managedFields dropped,
// refused watches logged as kind, changes notified.
func (s *Source) observe(kind string, inf cache.SharedIndexInformer) error {
	if err := inf.SetTransform(dropManagedFields); err != nil {
		return fmt.Errorf("%s informer: %w", kind, err)
	}
	if err := inf.SetWatchErrorHandler(s.watchError(kind)); err != nil {
		return fmt.Errorf("%s informer: %w", kind, err)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.changed() },
		UpdateFunc: func(old, cur any) {
			if resourceVersion(old) != resourceVersion(cur) {
				s.changed()
			}
		},
		DeleteFunc: func(any) { s.changed() },
	}); err != nil {
		return fmt.Errorf("%s informer: %w", kind, err)
	}
	return nil
}

// dropManagedFields keeps the caches small: managedFields is often the
// largest part of an object and tcpmap never reads it.
func dropManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

func resourceVersion(obj any) string {
	m, err := meta.Accessor(obj)
	if err != nil {
		return ""
	}
	return m.GetResourceVersion()
}

// watchError logs a list or watch the API server refused (a CRD not
// installed, RBAC missing). The reflector retries with backoff and its
// cache keeps the last copy, which is served. Network errors are retried
// by the reflector without calling this; reachability logs those.
func (s *Source) watchError(kind string) cache.WatchErrorHandler {
	return func(_ *cache.Reflector, err error) {
		s.warnEvery(kind, "kubernetes API: list/watch failed; serving the last copy, retrying with backoff",
			zap.String("kind", kind), zap.Error(err))
	}
}

// Start runs the discovery of the kinds, their informers and the change
// notifier until ctx is done or Close is called.
func (s *Source) Start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
	s.done = make(chan struct{})
	s.typed.Start(ctx.Done())
	s.wg.Add(1)
	go s.discover(ctx)
	go s.notify(ctx)
}

// WaitForSync waits until discovery has answered and the informers of the
// kinds it lists have listed once, then until the Secrets the resources
// name outside the kubernetes.io/tls informer have, or until ctx is done.
// A kind whose CRD is not installed is not waited for: it is empty until
// the CRD appears. It returns the kinds (and "Secret namespace/name") not
// yet synced, for instance all of them while the API server is away; they
// are served as soon as they sync.
func (s *Source) WaitForSync(ctx context.Context) []string {
	select {
	case <-s.discovered:
	case <-ctx.Done():
	}
	s.mu.Lock()
	infs := map[string]cache.SharedIndexInformer{config.KindSecret: s.secrets}
	for kind, inf := range s.kinds {
		infs[kind] = inf
	}
	var pending []string
	for _, k := range Kinds {
		if infs[k.Kind] == nil && !s.missing[k.Kind] {
			pending = append(pending, k.Kind) // discovery has not answered
		}
	}
	s.mu.Unlock()
	synced := make([]cache.InformerSynced, 0, len(infs))
	for _, inf := range infs {
		synced = append(synced, inf.HasSynced)
	}
	cache.WaitForCacheSync(ctx.Done(), synced...)
	for kind, inf := range infs {
		if !inf.HasSynced() {
			pending = append(pending, kind)
		}
	}
	if len(pending) == 0 {
		pending = s.awaitSecrets(ctx)
	}
	sort.Strings(pending)
	return pending
}

// Close stops the informers and the Event broadcaster.
func (s *Source) Close() {
	if s.cancel != nil {
		s.mu.Lock() // no Secret watch starts once Close has begun
		s.cancel()
		s.mu.Unlock()
		<-s.done
		s.wg.Wait()
	}
	s.dyn.Shutdown()
	s.typed.Shutdown()
	if s.broadcaster != nil {
		s.broadcaster.Shutdown()
	}
}

func (s *Source) changed() {
	select {
	case s.kick <- struct{}{}:
	default: // a notification is already due
	}
}

// notify calls OnChange once a burst of changes has been quiet for the
// debounce time, or at the latest ten debounce times after it began.
func (s *Source) notify(ctx context.Context) {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var first time.Time
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			now := time.Now()
			if !pending {
				pending, first = true, now
			}
			wait := s.opts.Debounce
			if limit := first.Add(10 * s.opts.Debounce).Sub(now); limit < wait {
				wait = max(limit, 0)
			}
			timer.Reset(wait)
		case <-timer.C:
			pending = false
			sctx, cancel := context.WithTimeout(ctx, secretSyncTimeout)
			s.awaitSecrets(sctx)
			cancel()
			if s.opts.OnChange != nil {
				s.opts.OnChange()
			}
		}
	}
}

// Name is the source's name in problems and clashes.
func (s *Source) Name() string { return SourceName }

// Resources converts the cached objects, getambassador.io kinds first,
// then the Secrets they, and the other sources' resources (Referenced),
// reference. It reads only the caches; it starts the watches of newly
// named Secrets that are not kubernetes.io/tls and stops those no longer
// named, without waiting for either. While a kind's CRD is missing it
// asks discovery again, without waiting either.
func (s *Source) Resources() ([]config.Resource, []config.Problem) {
	rs, probs := s.kindResources()
	s.mu.Lock()
	refs := s.withExternal(referencedSecrets(rs))
	more, _, _ := s.watchSecrets(refs, true)
	looking := len(s.kinds) < len(Kinds)
	s.mu.Unlock()
	if looking {
		select {
		case s.rediscover <- struct{}{}:
		default: // already due
		}
	}
	probs = append(probs, more...)
	for _, key := range sortedKeys(refs) {
		if sec := s.cachedSecret(key); sec != nil {
			r, p := Convert(SecretObject(sec))
			rs, probs = append(rs, r...), append(probs, p...)
		}
	}
	return rs, probs
}

// informer is the started informer of a getambassador.io kind; nil
// before discovery lists it.
func (s *Source) informer(kind string) cache.SharedIndexInformer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kinds[kind]
}

// kindResources converts the cached getambassador.io objects.
func (s *Source) kindResources() ([]config.Resource, []config.Problem) {
	var rs []config.Resource
	var probs []config.Problem
	for _, k := range Kinds {
		inf := s.informer(k.Kind)
		if inf == nil {
			continue // its CRD is not installed: none
		}
		for _, obj := range sortedObjects(inf.GetStore()) {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			r, p := Convert(u.Object)
			rs, probs = append(rs, r...), append(probs, p...)
		}
	}
	return rs, probs
}

// sortedObjects lists a cache in namespace/name order, so that reloads
// see the objects, and report their problems, in a stable order.
func sortedObjects(store cache.Store) []any {
	objs := store.List()
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i], _ = cache.MetaNamespaceKeyFunc(o)
	}
	idx := make([]int, len(objs))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return keys[idx[a]] < keys[idx[b]] })
	out := make([]any, len(objs))
	for i, j := range idx {
		out[i] = objs[j]
	}
	return out
}

// SecretObject is a typed Secret in the generic form a file would hold
// (informers drop the typed objects' apiVersion and kind).
func SecretObject(sec *corev1.Secret) map[string]any {
	md := map[string]any{"name": sec.Name, "namespace": sec.Namespace}
	if len(sec.Labels) > 0 {
		md["labels"] = stringMap(sec.Labels)
	}
	if len(sec.Annotations) > 0 {
		md["annotations"] = stringMap(sec.Annotations)
	}
	obj := map[string]any{"apiVersion": "v1", "kind": "Secret", "metadata": md, "type": string(sec.Type)}
	if len(sec.Data) > 0 {
		data := make(map[string]any, len(sec.Data))
		for k, v := range sec.Data {
			data[k] = base64.StdEncoding.EncodeToString(v)
		}
		obj["data"] = data
	}
	return obj
}

func stringMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Publish emits an Event on every Kubernetes resource whose outcome
// changed since the last call: Accepted (Normal) or Rejected (Warning,
// with the reasons). The daemon calls it after each reload with the
// manager's Outcomes. It does not block on the network: the broadcaster
// sends in the background.
func (s *Source) Publish(outcomes []config.Outcome) {
	now := Outcomes(outcomes)
	refs := make(map[config.Ref]*corev1.ObjectReference, len(now))
	for ref := range now {
		if or := s.objectReference(ref); or != nil {
			refs[ref] = or
		}
	}
	s.mu.Lock()
	due := s.pub.diff(now, func(ref config.Ref) string {
		if or := refs[ref]; or != nil {
			return string(or.UID)
		}
		return ""
	})
	s.mu.Unlock()
	for _, ref := range due {
		o := now[ref]
		s.recorder.Event(refs[ref], o.Type, o.Reason, o.Message)
	}
}

// objectReference finds ref in the caches; nil when it is gone.
func (s *Source) objectReference(ref config.Ref) *corev1.ObjectReference {
	key := ref.Namespace + "/" + ref.Name
	var obj any
	if ref.Kind == config.KindSecret { // TLS or watched by name
		if sec := s.cachedSecret(key); sec != nil {
			obj = sec
		}
	} else if inf := s.informer(ref.Kind); inf != nil {
		obj, _, _ = inf.GetStore().GetByKey(key)
	}
	if obj == nil {
		return nil
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil
	}
	apiVersion := Group + "/" + Version
	if ref.Kind == config.KindSecret {
		apiVersion = "v1"
	}
	return &corev1.ObjectReference{
		APIVersion: apiVersion, Kind: ref.Kind, Namespace: m.GetNamespace(), Name: m.GetName(),
		UID: m.GetUID(), ResourceVersion: m.GetResourceVersion(),
	}
}
