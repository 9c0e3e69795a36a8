package datapath

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcpmap/tcpmap/datapath/internal/privtest"
)

// pinnedNames are the objects Load pins with a bpf_link attach.
var pinnedNames = []string{"ctl", "dirs", "events", "link_splice_verdict", "link_steer_listener",
	"listen_socks", "listener_stats", "listeners", "mapping_totals", "mappings",
	"pairs", "prog_splice_verdict", "prog_steer_listener", "sock_hash", "stats"}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read pin directory: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func TestLoadPinsAttachesAndCloseUnpins(t *testing.T) {
	privtest.Require(t)
	for _, tc := range []struct {
		name       string
		legacy     bool
		wantAttach AttachMode
		wantPins   []string
	}{
		{"bpf_link", false, AttachLink, pinnedNames},
		{"legacy", true, AttachLegacy, slices.DeleteFunc(slices.Clone(pinnedNames), func(s string) bool { return s == "link_splice_verdict" })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := privtest.PinDir(t)
			o, err := Load(Options{PinDir: dir, LegacyAttach: tc.legacy})
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if got := o.Attach(); got != tc.wantAttach {
				t.Errorf("attach = %s, want %s", got, tc.wantAttach)
			}
			if got := listDir(t, dir); !slices.Equal(got, tc.wantPins) {
				t.Errorf("pinned %v, want %v", got, tc.wantPins)
			}
			if err := o.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin directory still there after Close (stat: %v)", err)
			}
			// A second Close is harmless.
			if err := o.Close(); err != nil {
				t.Errorf("second close: %v", err)
			}
		})
	}
}

func TestMapsRoundTripAndDump(t *testing.T) {
	privtest.Require(t)
	dir := privtest.PinDir(t)
	o, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {
		if err := o.Close(); err != nil {
			t.Error(err)
		}
	})
	// Cookies of sockets that do not exist: pairs, dirs and ctl do not
	// care, only sock_hash needs real sockets.
	const a, b = 1001, 1002
	if err := o.Pair(a, b, 7, 4096, PairPeerRoom); err != nil {
		t.Fatalf("pair: %v", err)
	}
	pairs, err := o.DumpPairs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]PairConfig{
		a: {Peer: b, MappingID: 7, Bound: 4096, Flags: PairPeerRoom},
		b: {Peer: a, MappingID: 7, Bound: 4096, Flags: PairPeerRoom},
	}
	if len(pairs) != len(want) || pairs[a] != want[a] || pairs[b] != want[b] {
		t.Errorf("pairs = %+v, want %+v", pairs, want)
	}
	if err := o.SetCtl(a, Ctl{UserWritten: 42, ResumeGen: 3}); err != nil {
		t.Fatal(err)
	}
	ctl, err := o.DumpCtl()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ctl[a], (Ctl{UserWritten: 42, ResumeGen: 3}); got != want {
		t.Errorf("ctl[a] = %+v, want %+v", got, want)
	}
	if d, err := o.Dir(a); err != nil || d != (Dir{}) {
		t.Errorf("fresh dir = %+v, %v; want zero", d, err)
	}
	if err := o.EnsureMapping(7); err != nil {
		t.Fatal(err)
	}
	totals, err := o.MappingTotals()
	if err != nil || len(totals) != 1 || totals[7] != (MappingTotal{}) {
		t.Errorf("totals = %+v, %v; want one zero entry", totals, err)
	}

	// bpftool reads the pinned maps with their BTF: the dump names every
	// field, which is what an operator debugging a live node sees.
	for _, tc := range []struct {
		m      string
		fields []string
	}{
		{"dirs", []string{"redirected", "passed", "packets", "last_active_ns", "mode", "pass_gen", "pass_reason"}},
		{"pairs", []string{"peer", "mapping_id", "bound", "flags"}},
		{"ctl", []string{"user_written", "resume_gen"}},
	} {
		out, err := exec.Command("bpftool", "map", "dump", "pinned", filepath.Join(dir, tc.m), "-j").Output()
		if err != nil {
			t.Fatalf("bpftool map dump %s: %v", tc.m, err)
		}
		var entries []struct {
			Formatted struct {
				Value map[string]any `json:"value"`
			} `json:"formatted"`
		}
		if err := json.Unmarshal(out, &entries); err != nil {
			t.Fatalf("bpftool output for %s: %v\n%s", tc.m, err, out)
		}
		if len(entries) != 2 {
			t.Fatalf("bpftool dumped %d %s entries, want 2:\n%s", len(entries), tc.m, out)
		}
		for _, f := range tc.fields {
			if _, ok := entries[0].Formatted.Value[f]; !ok {
				t.Errorf("bpftool dump of %s lacks field %q:\n%s", tc.m, f, out)
			}
		}
		if tc.m == "dirs" && entries[0].Formatted.Value["mode"] != "DIR_REDIRECT" {
			t.Errorf("dirs mode shown as %v, want the enum name DIR_REDIRECT", entries[0].Formatted.Value["mode"])
		}
	}

	if err := o.Unpair(a, b); err != nil {
		t.Fatal(err)
	}
	if err := o.SetCtl(a, Ctl{UserWritten: 1}); err == nil {
		t.Error("SetCtl after Unpair recreated the entry")
	}
	if pairs, _ := o.DumpPairs(); len(pairs) != 0 {
		t.Errorf("pairs after unpair = %+v", pairs)
	}
}

func TestLoadFailureReasons(t *testing.T) {
	privtest.Require(t)
	notBPF := t.TempDir()
	for _, tc := range []struct {
		name string
		opts Options
		env  string
		want Reason
	}{
		{"forced by option", Options{ForceFailure: true}, "", ReasonForced},
		{"forced by environment", Options{}, "1", ReasonForced},
		{"not on bpffs", Options{PinDir: filepath.Join(notBPF, "tcpmap")}, "", ReasonNoBPFFS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(ForceFailEnv, tc.env)
			o, err := Load(tc.opts)
			if err == nil {
				o.Close()
				t.Fatal("load succeeded, want an error")
			}
			var ue *UnavailableError
			if !errors.As(err, &ue) || Why(err) != tc.want {
				t.Fatalf("error %v (reason %q), want an UnavailableError with reason %q", err, Why(err), tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error message spans lines: %q", err)
			}
			t.Logf("fallback message: %v", err)
		})
	}
}

func TestPinDirBusy(t *testing.T) {
	privtest.Require(t)
	dir := privtest.PinDir(t)
	o, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	o2, err := Load(Options{PinDir: dir})
	if err == nil {
		o2.Close()
		t.Fatal("second load of a live pin directory succeeded")
	}
	if Why(err) != ReasonPinDirBusy {
		t.Fatalf("second load: %v, want reason %s", err, ReasonPinDirBusy)
	}
	// The live daemon's objects are intact.
	if got := listDir(t, dir); !slices.Equal(got, pinnedNames) {
		t.Errorf("pins after the refused load = %v, want %v", got, pinnedNames)
	}
}

// hangEnv makes the re-executed test binary load into the named pin
// directory, report it and wait to be killed.
const hangEnv = "TCPMAP_TEST_LOAD_AND_HANG"

func loadAndHang(dir string) int {
	o, err := Load(Options{PinDir: dir})
	if err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		return 1
	}
	_ = o
	os.Stdout.WriteString("loaded\n")
	time.Sleep(time.Minute)
	return 2
}

func TestRestartAfterSIGKILL(t *testing.T) {
	privtest.Require(t)
	dir := privtest.PinDir(t)
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), hangEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case l := <-line:
		if l != "loaded\n" {
			t.Fatalf("child: %q", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("child did not load within 20s")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if got := listDir(t, dir); !slices.Equal(got, pinnedNames) {
		t.Fatalf("pins left by the killed process = %v, want %v", got, pinnedNames)
	}

	o, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatalf("load after SIGKILL: %v", err)
	}
	defer func() {
		if err := o.Close(); err != nil {
			t.Error(err)
		}
	}()
	cleaned := slices.Clone(o.Cleaned)
	sort.Strings(cleaned)
	if !slices.Equal(cleaned, pinnedNames) {
		t.Errorf("cleaned %v, want %v", cleaned, pinnedNames)
	}
	if o.Attach() != AttachLink {
		t.Errorf("attach = %s after restart", o.Attach())
	}
	// The fresh objects work.
	if err := o.Pair(1, 2, 1, 100, 0); err != nil {
		t.Errorf("pair on the fresh maps: %v", err)
	}
}

func TestRestartAfterLeftoverPins(t *testing.T) {
	privtest.Require(t)
	dir := privtest.PinDir(t)
	o, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	// What a crash leaves: pins, no process holding the lock.
	o.abandon()
	o2, err := Load(Options{PinDir: dir, LegacyAttach: true})
	if err != nil {
		t.Fatalf("load over leftovers: %v", err)
	}
	if len(o2.Cleaned) != len(pinnedNames) {
		t.Errorf("cleaned %v, want all of %v", o2.Cleaned, pinnedNames)
	}
	if err := o2.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCloseRemovesStrayPins: pins Close does not know of (a failed load's
// maps, pinned before the load could hand them over) go with the
// directory; nothing stays behind.
func TestCloseRemovesStrayPins(t *testing.T) {
	privtest.Require(t)
	dir := privtest.PinDir(t)
	o, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(dir, "stray")); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("pin directory after close: %v, want it gone", err)
	}
}

// TestMountBPFFS: a bpffs is mounted where there is none, and an existing
// one is left alone.
func TestMountBPFFS(t *testing.T) {
	privtest.Require(t)
	dir := t.TempDir()
	mounted, err := MountBPFFS(dir)
	if err != nil || !mounted {
		t.Fatalf("first mount: %v, %v; want mounted", mounted, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("after mount: statfs type %x, %v; want bpffs", st.Type, err)
	}
	if mounted, err := MountBPFFS(dir); err != nil || mounted {
		t.Errorf("second mount: %v, %v; want left alone", mounted, err)
	}
}
