package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/internal/testutil"
	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/relay"
	"github.com/tcpmap/tcpmap/userspace/store"
	"github.com/tcpmap/tcpmap/userspace/upstream"
)

// sourcesManager runs a manager over one config file and a store.
func sourcesManager(t *testing.T, fileYAML string) (*Manager, string, *store.Store) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "conf.yaml")
	if err := os.WriteFile(file, []byte(fileYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	st := store.New(filepath.Join(dir, "state"))
	m := New(Options{
		ConfigPaths:  []string{file},
		Store:        st,
		Relay:        relay.Options{Dialer: upstream.NewDialer(upstream.Options{})},
		DrainTimeout: time.Second,
	})
	t.Cleanup(func() { shutdown(t, m) })
	return m, file, st
}

func shutdown(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func TestMergeClashIsAnErrorOnTheStoreObject(t *testing.T) {
	ssh := config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: "ssh"}
	other := config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: "other"}
	fileOrigin := config.Origin{Source: "file", File: "/etc/tcpmap/ssh.yaml", Line: 3}
	files := []config.Resource{{Ref: ssh, Origin: fileOrigin}}
	applied := []config.Resource{{Ref: ssh, Origin: config.Origin{Source: "api"}}, {Ref: other, Origin: config.Origin{Source: "api"}}}

	got, problems := Merge(files, applied)
	if len(got) != 2 || got[0].Origin != fileOrigin || got[1].Ref != other {
		t.Errorf("merged = %+v, want the file's ssh then other", got)
	}
	if len(problems) != 1 {
		t.Fatalf("problems = %v, want one clash", problems)
	}
	p := problems[0]
	msg := problemText(p)
	if p.Ref != ssh || p.IsWarning() || p.Origin.Source != "api" ||
		!strings.Contains(msg, "/etc/tcpmap/ssh.yaml:3") || !strings.HasSuffix(msg, "(api)") {
		t.Errorf("clash problem = %q (%+v), want an error on the api object naming both origins", msg, p)
	}
}

func TestReloadMergesFilesAndStore(t *testing.T) {
	pFile, pAPI, pClash := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	m, file, st := sourcesManager(t, testutil.MappingYAML("from-file", pFile))
	ref := func(name string) config.Ref {
		return config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: name}
	}
	if err := st.Put(ref("from-api"), []byte(testutil.MappingYAML("from-api", pAPI))); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ref("from-file"), []byte(testutil.MappingYAML("from-file", pClash))); err != nil {
		t.Fatal(err)
	}
	res := m.Reload()
	if res.Listeners != 2 || res.Errors != 1 {
		t.Fatalf("Reload = %+v (problems %v), want 2 listeners and the clash", res, m.Problems())
	}
	objs := m.Objects()
	if len(objs) != 2 || objs[0].Ref.Name != "from-api" || objs[0].Origin.Source != "api" ||
		objs[1].Ref.Name != "from-file" || objs[1].Origin.File != file {
		t.Errorf("Objects = %+v", objs)
	}
	addrs := m.ListenerAddrs()
	for _, p := range []int{pFile, pAPI} {
		if _, ok := addrs[fmt.Sprintf("127.0.0.1:%d", p)]; !ok {
			t.Errorf("no listener on port %d: %v", p, addrs)
		}
	}
	if _, ok := addrs[fmt.Sprintf("127.0.0.1:%d", pClash)]; ok {
		t.Errorf("the clashing store object is served")
	}

	// Removing the shadowed copy clears the clash; the file's object stays.
	del, err := m.DeleteObject(ref("from-file"))
	if err != nil || del.Shadowed.File != file || del.Reload.Errors != 0 || del.Reload.Listeners != 2 {
		t.Fatalf("DeleteObject(shadowed copy) = %+v, %v", del, err)
	}
	if _, ok := st.Get(ref("from-file")); ok {
		t.Error("shadowed copy still stored")
	}
}

func TestApplyWarnsAboutAnotherAmbassadorID(t *testing.T) {
	m, _, _ := sourcesManager(t, "")
	body := strings.Replace(testutil.MappingYAML("elsewhere", testutil.FreePort(t)), "spec:\n", "spec:\n  ambassador_id: [other]\n", 1)
	res, err := m.ApplyObjects("x.yaml", []byte(body))
	if err != nil || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0].Reason, "stored but not served") {
		t.Fatalf("ApplyObjects = %+v, %v; want one warning that it is not served", res, err)
	}
	if res.Reload.Listeners != 0 {
		t.Errorf("%d listeners, want 0", res.Reload.Listeners)
	}
}

func TestApplyAndDeleteObjects(t *testing.T) {
	pFile, pA := testutil.FreePort(t), testutil.FreePort(t)
	m, file, st := sourcesManager(t, testutil.MappingYAML("ssh", pFile))
	m.Reload()

	res, err := m.ApplyObjects("a.yaml", []byte(testutil.MappingYAML("a", pA)))
	if err != nil || len(res.Changes) != 1 || res.Changes[0].Action != "created" || res.Reload.Listeners != 2 {
		t.Fatalf("ApplyObjects = %+v, %v", res, err)
	}
	res, err = m.ApplyObjects("a.yaml", []byte(testutil.MappingYAML("a", pA)))
	if err != nil || res.Changes[0].Action != "unchanged" {
		t.Fatalf("apply again = %+v, %v; want unchanged", res, err)
	}

	// The file's port on all addresses: the resolve dry run rejects it.
	allAddresses := strings.Replace(testutil.MappingYAML("b", pFile), "  address: 127.0.0.1\n", "", 1)
	_, err = m.ApplyObjects("b.yaml", []byte(allAddresses))
	var rej *RejectedError
	if !errors.As(err, &rej) || !strings.Contains(err.Error(), "TCPMapping default/b") {
		t.Fatalf("conflicting apply: %v, want a RejectedError naming default/b", err)
	}
	// Invalid YAML and a name used by a file are rejected too.
	for _, body := range []string{"kind: [", testutil.MappingYAML("ssh", testutil.FreePort(t))} {
		if _, err := m.ApplyObjects("x.yaml", []byte(body)); !errors.As(err, &rej) {
			t.Errorf("apply %q: %v, want RejectedError", body, err)
		}
	}
	if entries, _ := st.Load(); len(entries) != 1 {
		t.Errorf("store holds %d objects after rejected applies, want 1", len(entries))
	}

	_, err = m.DeleteObject(config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: "ssh"})
	var src *SourceError
	if !errors.As(err, &src) || !strings.Contains(err.Error(), file+":1; edit that file instead") {
		t.Errorf("delete file object: %v, want a SourceError naming %s", err, file)
	}
	_, err = m.DeleteObject(config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: "nope"})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("delete unknown: %v, want ErrNotFound", err)
	}
	if _, err := m.DeleteObject(config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: "a"}); err != nil {
		t.Fatalf("delete a: %v", err)
	}
	if n := len(m.ListenerAddrs()); n != 1 {
		t.Errorf("%d listeners after deleting a, want 1", n)
	}
}

// referrer is a Source that records what it was told before Resources.
type referrer struct {
	told  []string
	order []string
}

func (r *referrer) Name() string { return "cluster" }

func (r *referrer) Referenced(others []config.Resource) {
	r.told = r.told[:0]
	for _, o := range others {
		r.told = append(r.told, o.Ref.String())
	}
	r.order = append(r.order, "referenced")
}

func (r *referrer) Resources() ([]config.Resource, []config.Problem) {
	r.order = append(r.order, "resources")
	return nil, nil
}

func TestReferrerIsToldFilesAndStore(t *testing.T) {
	m, _, st := sourcesManager(t, testutil.MappingYAML("from-file", testutil.FreePort(t)))
	src := &referrer{}
	m.opts.Sources = []Source{src}
	ref := config.Ref{Kind: config.KindTCPMapping, Namespace: "default", Name: "from-api"}
	if err := st.Put(ref, []byte(testutil.MappingYAML("from-api", testutil.FreePort(t)))); err != nil {
		t.Fatal(err)
	}
	// Before the first reload (the daemon does this before it waits for
	// Kubernetes), then again at each reload, just before Resources.
	m.TellReferrers()
	if got, want := fmt.Sprint(src.told), "[TCPMapping default/from-file TCPMapping default/from-api]"; got != want {
		t.Errorf("TellReferrers told %s, want %s", got, want)
	}
	src.told = nil
	m.Reload()
	if got, want := fmt.Sprint(src.told), "[TCPMapping default/from-file TCPMapping default/from-api]"; got != want {
		t.Errorf("told %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(src.order), "[referenced referenced resources]"; got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
}
