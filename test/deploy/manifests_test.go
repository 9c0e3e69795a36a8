package deploy

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"

	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/daemon"
)

// wantCaps are the capabilities the DaemonSet adds, and the only ones: the
// comments in daemonset.yaml say why each, and TestImage runs the image with
// exactly these.
var wantCaps = []string{"BPF", "NET_ADMIN", "PERFMON", "NET_BIND_SERVICE"}

// wantRules is the ClusterRole, as (group, resource, verb) triples.
var wantRules = func() []string {
	var out []string
	add := func(group string, resources, verbs []string) {
		for _, r := range resources {
			for _, v := range verbs {
				out = append(out, group+"/"+r+":"+v)
			}
		}
	}
	read := []string{"get", "list", "watch"}
	add("getambassador.io", []string{"tcpmappings", "tlscontexts", "hosts", "listeners", "modules"}, read)
	add("", []string{"secrets"}, read)
	add("", []string{"events"}, []string{"create", "patch"})
	add("events.k8s.io", []string{"events"}, []string{"create", "patch"})
	sort.Strings(out)
	return out
}()

// Placeholders for the downward API fields the DaemonSet's env uses; the
// kubelet fills in the real ones.
var fieldValues = map[string]string{
	"status.podIP":  "192.0.2.10",
	"spec.nodeName": "node-a",
}

// manifests are the decoded documents of deploy/kubernetes.
type manifests struct {
	root            string
	docs            []document
	namespaces      []corev1.Namespace
	serviceAccounts []corev1.ServiceAccount
	clusterRoles    []rbacv1.ClusterRole
	bindings        []rbacv1.ClusterRoleBinding
	daemonSets      []appsv1.DaemonSet
	crdPlurals      []string
	ambassador      []document
	kustomizations  map[string]kustomization // by directory, relative to root
	patches         map[string]document      // by file, relative to root
}

// kustomization is the part of a kustomization.yaml the tests check.
type kustomization struct {
	Namespace string   `json:"namespace"`
	Resources []string `json:"resources"`
	Patches   []struct {
		Path string `json:"path"`
	} `json:"patches"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// loadManifests decodes every document under deploy/kubernetes strictly
// (an unknown or misspelt field is an error) into its typed API object.
func loadManifests(t *testing.T) *manifests {
	t.Helper()
	root := filepath.Join(repoRoot(t), "deploy", "kubernetes")
	m := &manifests{root: root, docs: readDocuments(t, root),
		kustomizations: map[string]kustomization{}, patches: map[string]document{}}
	if len(m.docs) == 0 {
		t.Fatalf("no manifests under %s", root)
	}
	// Kustomizations first: the files they name as patches are partial
	// objects, not resources.
	patchFiles := map[string]bool{}
	for _, d := range m.docs {
		if d.Kind != "Kustomization" {
			continue
		}
		var k kustomization
		if err := yaml.Unmarshal(d.Data, &k); err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		dir := filepath.Dir(d.File)
		m.kustomizations[dir] = k
		for _, p := range k.Patches {
			patchFiles[filepath.Join(dir, p.Path)] = true
		}
	}
	for _, d := range m.docs {
		if patchFiles[d.File] {
			m.patches[d.File] = d
			continue
		}
		if err := m.decode(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "crds")); err != nil {
		t.Logf("deploy/kubernetes/crds is not there (yet): checked the other manifests only")
	}
	return m
}

func (m *manifests) decode(d document) error {
	strict := func(v any) error { return yaml.UnmarshalStrict(d.Data, v) }
	switch d.Kind {
	case "Kustomization":
		return nil
	case "Namespace":
		var o corev1.Namespace
		err := strict(&o)
		m.namespaces = append(m.namespaces, o)
		return err
	case "ServiceAccount":
		var o corev1.ServiceAccount
		err := strict(&o)
		m.serviceAccounts = append(m.serviceAccounts, o)
		return err
	case "ClusterRole":
		var o rbacv1.ClusterRole
		err := strict(&o)
		m.clusterRoles = append(m.clusterRoles, o)
		return err
	case "ClusterRoleBinding":
		var o rbacv1.ClusterRoleBinding
		err := strict(&o)
		m.bindings = append(m.bindings, o)
		return err
	case "DaemonSet":
		var o appsv1.DaemonSet
		err := strict(&o)
		m.daemonSets = append(m.daemonSets, o)
		return err
	case "CustomResourceDefinition":
		// apiextensions types are not among the module's dependencies;
		// the fields that tie a CRD to the ClusterRole are checked.
		var o struct {
			APIVersion string `json:"apiVersion"`
			Spec       struct {
				Group string `json:"group"`
				Names struct {
					Plural string `json:"plural"`
					Kind   string `json:"kind"`
				} `json:"names"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(d.Data, &o); err != nil {
			return err
		}
		if o.APIVersion != "apiextensions.k8s.io/v1" || o.Spec.Group != "getambassador.io" || o.Spec.Names.Plural == "" {
			return fmt.Errorf("CRD: apiVersion %q group %q plural %q, want apiextensions.k8s.io/v1, getambassador.io and a plural",
				o.APIVersion, o.Spec.Group, o.Spec.Names.Plural)
		}
		m.crdPlurals = append(m.crdPlurals, o.Spec.Names.Plural)
		return nil
	case "TCPMapping", "TLSContext", "Host", "Listener", "Module":
		m.ambassador = append(m.ambassador, d)
		return nil
	default:
		return fmt.Errorf("kind %q: not a kind tcpmap's manifests use", d.Kind)
	}
}

// daemonSet is the one base DaemonSet.
func (m *manifests) daemonSet(t *testing.T) appsv1.DaemonSet {
	t.Helper()
	if len(m.daemonSets) != 1 {
		t.Fatalf("%d DaemonSets outside patches, want 1", len(m.daemonSets))
	}
	return m.daemonSets[0]
}

func TestDaemonSetMatchesDaemon(t *testing.T) {
	m := loadManifests(t)
	ds := m.daemonSet(t)
	checkDaemonSet(t, ds, false)
}

// TestPrivilegedOverlay applies the overlay's strategic merge patch as
// kustomize does and checks the result the same way.
func TestPrivilegedOverlay(t *testing.T) {
	checkDaemonSet(t, privilegedDaemonSet(t, loadManifests(t)), true)
}

// privilegedDaemonSet is the base DaemonSet with the privileged overlay's
// strategic merge patch applied, as kustomize applies it.
func privilegedDaemonSet(t *testing.T, m *manifests) appsv1.DaemonSet {
	t.Helper()
	ds := m.daemonSet(t)
	p, ok := m.patches[filepath.Join("privileged", "daemonset-privileged.yaml")]
	if !ok {
		t.Fatalf("privileged/ has no DaemonSet patch; patches: %v", keys(m.patches))
	}
	var partial appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(p.Data, &partial); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if partial.Name != ds.Name || partial.Namespace != ds.Namespace {
		t.Fatalf("patch targets %s/%s, DaemonSet is %s/%s", partial.Namespace, partial.Name, ds.Namespace, ds.Name)
	}
	base, err := json.Marshal(ds)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := yaml.YAMLToJSON(p.Data)
	if err != nil {
		t.Fatal(err)
	}
	merged, err := strategicpatch.StrategicMergePatch(base, patch, appsv1.DaemonSet{})
	if err != nil {
		t.Fatalf("apply %s: %v", p, err)
	}
	var got appsv1.DaemonSet
	if err := json.Unmarshal(merged, &got); err != nil {
		t.Fatal(err)
	}
	return got
}

// checkDaemonSet checks the DaemonSet against the daemon's flags and the
// API's own rules; privileged selects the overlay's expectations.
func checkDaemonSet(t *testing.T, ds appsv1.DaemonSet, privileged bool) daemon.Options {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("hostNetwork is false: listeners would open in the pod's network namespace, not on the node")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q, want ClusterFirstWithHostNet (upstream Services resolve through cluster DNS)", spec.DNSPolicy)
	}
	if spec.ServiceAccountName == "" {
		t.Error("no serviceAccountName: the daemon would watch as the namespace's default account")
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || *us.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1", us)
	}
	if s := us.RollingUpdate; s != nil && s.MaxSurge != nil && s.MaxSurge.IntValue() != 0 {
		t.Errorf("maxSurge %v: a surged pod cannot bind the ports the old one holds", s.MaxSurge)
	}
	sel := ds.Spec.Selector
	if sel == nil || len(sel.MatchLabels) == 0 {
		t.Fatal("no selector")
	}
	for k, v := range sel.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the template's labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1 (tcpmapd)", len(spec.Containers))
	}
	checkMountInit(t, spec)
	c := spec.Containers[0]
	if len(c.Command) != 0 {
		t.Errorf("command %q overrides the image's entrypoint (tcpmapd)", c.Command)
	}

	o, vars := containerOptions(t, c)
	if !o.Kubernetes {
		t.Error("args lack --kubernetes: the pods would serve no TCPMapping")
	}
	if vars["NODE_NAME"] != fieldValues["spec.nodeName"] {
		t.Error("env NODE_NAME is not spec.nodeName: Events would not name the node that reports them")
	}

	// Every path the daemon writes lies on a writable hostPath mount, and
	// each is the same path on the node, so tcpmapctl and bpftool there
	// see what the pod sees.
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext")
	}
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	mountFor := func(what, path string) (corev1.VolumeMount, string) {
		t.Helper()
		var best *corev1.VolumeMount
		for i, vm := range c.VolumeMounts {
			if underDir(path, vm.MountPath) && (best == nil || len(vm.MountPath) > len(best.MountPath)) {
				best = &c.VolumeMounts[i]
			}
		}
		if best == nil {
			t.Errorf("%s %s is on no volume mount: it would be lost with the pod (or the read-only root file system refuses it)", what, path)
			return corev1.VolumeMount{}, ""
		}
		v, ok := vols[best.Name]
		if !ok || v.HostPath == nil {
			t.Errorf("%s %s: mount %s is not a hostPath volume", what, path, best.MountPath)
			return *best, ""
		}
		rel, _ := filepath.Rel(best.MountPath, path)
		hostPath := filepath.Join(v.HostPath.Path, rel)
		if hostPath != path {
			t.Errorf("%s %s is %s on the node: mount it at the same path", what, path, hostPath)
		}
		return *best, hostPath
	}
	writable := func(what, path string) corev1.VolumeMount {
		t.Helper()
		vm, _ := mountFor(what, path)
		if vm.ReadOnly {
			t.Errorf("%s %s: mount %s is read-only", what, path, vm.MountPath)
		}
		return vm
	}

	bpf := writable("--bpffs", o.BPFFS)
	if bpf.MountPath != "/sys/fs/bpf" {
		t.Errorf("--bpffs %s is under mount %q, want the host's bpffs at /sys/fs/bpf", o.BPFFS, bpf.MountPath)
	}
	if filepath.Clean(o.BPFFS) == "/sys/fs/bpf" {
		t.Error("--bpffs is the bpffs root: the daemon cleans its pin directory, so it needs one of its own")
	}
	prop := corev1.MountPropagationNone
	if bpf.MountPropagation != nil {
		prop = *bpf.MountPropagation
	}
	switch {
	case prop == corev1.MountPropagationBidirectional && (sc.Privileged == nil || !*sc.Privileged):
		t.Error("bpffs mount is Bidirectional in an unprivileged container: the API server rejects that")
	case privileged && prop != corev1.MountPropagationBidirectional:
		t.Errorf("privileged: bpffs propagation %s, want Bidirectional", prop)
	case !privileged && prop != corev1.MountPropagationHostToContainer:
		t.Errorf("bpffs propagation %s, want HostToContainer (a bpffs mounted on the host later must reach the pod)", prop)
	}
	if o.AdminSocket == "" {
		t.Error("--admin-socket is empty: tcpmapctl on the node would have nothing to talk to")
	} else {
		writable("--admin-socket's directory", filepath.Dir(o.AdminSocket))
		if _, host := mountFor("--admin-socket", o.AdminSocket); host != "" && host != api.DefaultSocket {
			t.Errorf("admin socket is %s on the node; tcpmapctl's default is %s", host, api.DefaultSocket)
		}
	}
	if o.StateDir == "" {
		t.Error("--state-dir is empty: objects applied with tcpmapctl would be refused")
	} else {
		writable("--state-dir", o.StateDir)
	}
	if cg, _ := mountFor("cgroup v2", "/sys/fs/cgroup"); cg.MountPath != "/sys/fs/cgroup" {
		t.Errorf("the host's /sys/fs/cgroup is not mounted (found %q)", cg.MountPath)
	}

	// Probes reach the daemon's /healthz and /readyz on --metrics-addr.
	host, portStr, err := net.SplitHostPort(o.MetricsAddr)
	if err != nil {
		t.Fatalf("--metrics-addr %q: %v", o.MetricsAddr, err)
	}
	metricsPort, _ := strconv.Atoi(portStr)
	if ip := net.ParseIP(host); host != "" && !ip.IsUnspecified() && host != fieldValues["status.podIP"] {
		t.Errorf("--metrics-addr host %s: the kubelet probes the pod IP (the node's, with hostNetwork); bind $(POD_IP) or all addresses", host)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"readinessProbe", c.ReadinessProbe, "/readyz"}, {"livenessProbe", c.LivenessProbe, "/healthz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: want an httpGet on %s", pr.name, pr.path)
			continue
		}
		g := pr.probe.HTTPGet
		port := g.Port.IntValue()
		if g.Port.Type == intstr.String {
			port = int(ports[g.Port.StrVal])
		}
		if g.Path != pr.path || port != metricsPort || g.Host != "" || (g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP) {
			t.Errorf("%s: %s %s://%s:%d%s, want GET http://<pod IP>:%d%s (--metrics-addr %s)",
				pr.name, "GET", g.Scheme, g.Host, port, g.Path, metricsPort, pr.path, o.MetricsAddr)
		}
	}

	grace := int64(30) // the API's default
	if spec.TerminationGracePeriodSeconds != nil {
		grace = *spec.TerminationGracePeriodSeconds
	}
	if float64(grace) <= o.DrainTimeout.Seconds() {
		t.Errorf("terminationGracePeriodSeconds %d, want more than --drain-timeout %v (draining, then unpinning)", grace, o.DrainTimeout)
	}

	// Capabilities: exactly wantCaps on top of nothing.
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("capabilities.drop lacks ALL: the runtime's defaults (CHOWN, DAC_OVERRIDE, NET_RAW, ...) would stay")
	}
	var added []string
	if sc.Capabilities != nil {
		for _, c := range sc.Capabilities.Add {
			added = append(added, string(c))
		}
	}
	if got, want := sortedCopy(added), sortedCopy(wantCaps); !slices.Equal(got, want) {
		t.Errorf("capabilities.add %v, want %v", got, want)
	}
	isPriv := sc.Privileged != nil && *sc.Privileged
	if isPriv != privileged {
		t.Errorf("privileged %v, want %v", isPriv, privileged)
	}
	if ape := sc.AllowPrivilegeEscalation; isPriv && ape != nil && !*ape {
		t.Error("privileged with allowPrivilegeEscalation false: the API server rejects that")
	} else if !isPriv && (ape == nil || *ape) {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}

	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().IsZero() || req.Memory().IsZero() {
		t.Errorf("resources.requests %v: want cpu and memory", req)
	}
	if lim.Memory().IsZero() || lim.Memory().Cmp(*req.Memory()) < 0 {
		t.Errorf("resources.limits.memory %v: want a bound at or above the request %v", lim.Memory(), req.Memory())
	}
	// The Go runtime learns that bound from GOMEMLIMIT (bytes, which a
	// resourceFieldRef gives with its default divisor of 1).
	memLimit := false
	for _, e := range c.Env {
		if rf := e.ValueFrom; e.Name == "GOMEMLIMIT" && rf != nil && rf.ResourceFieldRef != nil &&
			rf.ResourceFieldRef.Resource == "limits.memory" && (rf.ResourceFieldRef.ContainerName == "" || rf.ResourceFieldRef.ContainerName == c.Name) &&
			(rf.ResourceFieldRef.Divisor.IsZero() || rf.ResourceFieldRef.Divisor.Value() == 1) {
			memLimit = true
		}
	}
	if !memLimit {
		t.Error("env GOMEMLIMIT: want the container's limits.memory in bytes (resourceFieldRef), so the collector keeps under it")
	}
	return o
}

// containerOptions parses the container's args, with $(VAR) expanded from
// its env as the kubelet does, into the daemon's options.
func containerOptions(t *testing.T, c corev1.Container) (daemon.Options, map[string]string) {
	t.Helper()
	vars := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			v, ok := fieldValues[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Errorf("env %s: fieldRef %s has no test placeholder", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			vars[e.Name] = v
		case e.ValueFrom == nil:
			vars[e.Name] = e.Value
		}
	}
	args, err := expandArgs(c.Args, vars)
	if err != nil {
		t.Fatal(err)
	}
	o, err := parseDaemonArgs(args)
	if err != nil {
		t.Fatalf("the DaemonSet's args do not parse as tcpmapd's: %v", err)
	}
	return o, vars
}

func TestRBAC(t *testing.T) {
	m := loadManifests(t)
	ds := m.daemonSet(t)
	if len(m.clusterRoles) != 1 || len(m.bindings) != 1 || len(m.serviceAccounts) != 1 || len(m.namespaces) != 1 {
		t.Fatalf("%d ClusterRoles, %d ClusterRoleBindings, %d ServiceAccounts, %d Namespaces; want one each",
			len(m.clusterRoles), len(m.bindings), len(m.serviceAccounts), len(m.namespaces))
	}
	role, b, sa, ns := m.clusterRoles[0], m.bindings[0], m.serviceAccounts[0], m.namespaces[0]

	var got []string
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: resourceNames/nonResourceURLs are not expected", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if g == "*" || res == "*" || v == "*" {
						t.Errorf("rule %+v: wildcard", r)
					}
					got = append(got, g+"/"+res+":"+v)
				}
			}
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, wantRules) {
		t.Errorf("ClusterRole grants\n  %v\nwant exactly\n  %v", got, wantRules)
	}
	// The CRDs, when present, are the resources the role names.
	if len(m.crdPlurals) > 0 {
		want := []string{"hosts", "listeners", "modules", "tcpmappings", "tlscontexts"}
		for _, p := range want {
			if !slices.Contains(m.crdPlurals, p) {
				t.Errorf("no CRD for getambassador.io %s (CRDs: %v)", p, m.crdPlurals)
			}
		}
	}

	if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.Name != role.Name || b.RoleRef.APIGroup != rbacv1.GroupName {
		t.Errorf("binding roleRef %+v, want ClusterRole %s", b.RoleRef, role.Name)
	}
	if len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" || b.Subjects[0].Name != sa.Name || b.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("binding subjects %+v, want ServiceAccount %s/%s", b.Subjects, sa.Namespace, sa.Name)
	}
	if ds.Spec.Template.Spec.ServiceAccountName != sa.Name || ds.Namespace != sa.Namespace {
		t.Errorf("DaemonSet %s/%s runs as %q; the ServiceAccount is %s/%s",
			ds.Namespace, ds.Name, ds.Spec.Template.Spec.ServiceAccountName, sa.Namespace, sa.Name)
	}
	if sa.Namespace != ns.Name {
		t.Errorf("ServiceAccount in namespace %q, the Namespace manifest is %q", sa.Namespace, ns.Name)
	}
	if k := m.kustomizations["base"]; k.Namespace != "" && k.Namespace != ns.Name {
		t.Errorf("kustomization namespace %q, the Namespace manifest is %q", k.Namespace, ns.Name)
	}
}

// TestKustomizations checks that each kustomization lists every manifest
// of its directory (a file left out would silently not be applied) and
// that what it names exists.
func TestKustomizations(t *testing.T) {
	m := loadManifests(t)
	for _, dir := range []string{".", "base", "examples", "privileged"} {
		if _, ok := m.kustomizations[dir]; !ok {
			t.Errorf("%s has no kustomization.yaml", dir)
		}
	}
	for dir, k := range m.kustomizations {
		listed := map[string]bool{}
		for _, r := range k.Resources {
			path := filepath.Join(m.root, dir, r)
			fi, err := os.Stat(path)
			switch {
			case err != nil && filepath.Base(r) == "crds":
				// Written separately; tolerated until it lands.
			case err != nil:
				t.Errorf("%s/kustomization.yaml: resource %s: %v", dir, r, err)
			case fi.IsDir():
				if _, err := os.Stat(filepath.Join(path, "kustomization.yaml")); err != nil {
					t.Errorf("%s/kustomization.yaml: resource %s is a directory without kustomization.yaml", dir, r)
				}
			}
			listed[filepath.Clean(r)] = true
		}
		for _, p := range k.Patches {
			listed[filepath.Clean(p.Path)] = true
		}
		entries, err := os.ReadDir(filepath.Join(m.root, dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.IsDir() || !isYAML(e.Name()) || e.Name() == "kustomization.yaml" {
				continue
			}
			if !listed[e.Name()] {
				t.Errorf("%s/%s is not listed in %s/kustomization.yaml", dir, e.Name(), dir)
			}
		}
	}
	base := m.kustomizations["base"]
	image := m.daemonSet(t).Spec.Template.Spec.Containers[0].Image
	name, _, _ := strings.Cut(image, ":")
	if len(base.Images) != 1 || base.Images[0].Name != name {
		t.Errorf("kustomization images %+v: want one entry for the DaemonSet's image %s", base.Images, name)
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	sort.Strings(c)
	return c
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkMountInit checks the init container that makes the node's
// /sys/fs/bpf a bpffs: it runs `tcpmapd mount-bpffs` on the same hostPath
// the daemon pins under, privileged (mount needs CAP_SYS_ADMIN) and with
// Bidirectional propagation (so the mount reaches the host), which the API
// allows only to privileged containers.
func checkMountInit(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want 1 (mount-bpffs)", len(spec.InitContainers))
	}
	ic := spec.InitContainers[0]
	if len(ic.Command) != 0 || len(ic.Args) != 2 || ic.Args[0] != "mount-bpffs" {
		t.Fatalf("init container %s runs %q %q, want the image's tcpmapd with args mount-bpffs DIR", ic.Name, ic.Command, ic.Args)
	}
	if ic.Image != spec.Containers[0].Image {
		t.Errorf("init container image %s, daemon image %s: want the same (kustomize images: rewrites both)", ic.Image, spec.Containers[0].Image)
	}
	if sc := ic.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("init container is not privileged: it cannot mount, nor use Bidirectional propagation")
	}
	var mount *corev1.VolumeMount
	for i, vm := range ic.VolumeMounts {
		if vm.MountPath == ic.Args[1] {
			mount = &ic.VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Fatalf("init container mounts nothing at %s", ic.Args[1])
	}
	if mount.MountPropagation == nil || *mount.MountPropagation != corev1.MountPropagationBidirectional {
		t.Errorf("init container's %s propagation %v, want Bidirectional (else the bpffs it mounts stays in the pod)", mount.MountPath, mount.MountPropagation)
	}
	var daemonBPF string
	for _, vm := range spec.Containers[0].VolumeMounts {
		if vm.MountPath == "/sys/fs/bpf" {
			daemonBPF = vm.Name
		}
	}
	if mount.Name != daemonBPF || ic.Args[1] != "/sys/fs/bpf" {
		t.Errorf("init container mounts volume %s at %s; the daemon pins on volume %q at /sys/fs/bpf", mount.Name, ic.Args[1], daemonBPF)
	}
}
