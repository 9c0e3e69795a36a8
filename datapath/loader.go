// Package datapath loads, attaches, pins and gives typed access to the BPF
// objects of tcpmap's kernel splice (bpf/splice.c). It knows nothing of
// Emissary or of connection life cycles; datapath/splice builds the
// connection engine on top of it.
package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where a daemon pins its objects unless told otherwise
// (tcpmapd --bpffs).
const DefaultPinDir = "/sys/fs/bpf/tcpmap"

// Pin hierarchy. One directory per daemon, flat, so that
// `bpftool map dump pinned <dir>/<map>` works with the names below:
//
//	/sys/fs/bpf/tcpmap/                    (Options.PinDir)
//	├── sock_hash            SOCKHASH      socket cookie → socket (redirect targets)
//	├── pairs                HASH          cookie → struct pair       (userspace, once per hand-off)
//	├── dirs                 HASH          cookie → struct dir_state  (written by the verdict only)
//	├── ctl                  HASH          cookie → struct dir_ctl    (written by userspace only)
//	├── mapping_totals       PERCPU_HASH   mapping id → struct mapping_total
//	├── events               RINGBUF       struct event (a direction entered pass mode)
//	├── stats                PERCPU_ARRAY  0 → struct prog_stats
//	├── prog_splice_verdict  the sk_skb stream verdict program
//	├── link_splice_verdict  its bpf_link on sock_hash (absent with legacy attach)
//	├── listeners            HASH          (family, address, port) → struct listener   (bpf/lookup.c)
//	├── mappings             HASH          mapping id → struct mapping (name, upstream, weight, flags)
//	├── listen_socks         SOCKMAP       0 IPv4, 1 IPv6 → the shared listening socket
//	├── listener_stats       PERCPU_HASH   listener id → struct listener_stat
//	├── prog_steer_listener  the sk_lookup program
//	└── link_steer_listener  its bpf_link on the daemon's network namespace
//
// datapath/README.md documents each map's fields and how to read them
// with bpftool.
//
// The directory itself is flock(2)ed by the owning process for as long as
// the objects are loaded: a second daemon with the same directory fails
// with ReasonPinDirBusy instead of deleting a live daemon's objects, and a
// lock that can be taken proves that whatever is pinned there belongs to a
// dead process.
const (
	pinProgram       = "prog_splice_verdict"
	pinLink          = "link_splice_verdict"
	pinLookupProgram = "prog_steer_listener"
	pinLookupLink    = "link_steer_listener"
)

// minKernel is the oldest kernel the datapath accepts: 6.4 fixed a series
// of FIN, stall and copied_seq bugs in the sockmap receive path (see
// datapath/README.md); older kernels load the program but lose or stall
// connections.
var minKernel = [2]int{6, 4}

// Options configure Load.
type Options struct {
	// PinDir is the bpffs directory the objects are pinned in; default
	// DefaultPinDir. Its parent must be on a mounted bpffs.
	PinDir string
	// MaxSockets bounds the per-socket maps (two entries per spliced
	// pair); default 131072.
	MaxSockets uint32
	// MaxMappings bounds mapping_totals; default 4096.
	MaxMappings uint32
	// LegacyAttach skips the bpf_link attach and uses BPF_PROG_ATTACH,
	// as on kernels before 6.10. For tests.
	LegacyAttach bool
	// ForceFailure makes Load fail with ReasonForced, like
	// TCPMAP_FORCE_BPF_FAIL=1. For tests of the userspace fallback.
	ForceFailure bool
	// NoSteering leaves the sk_lookup program unattached, so every
	// listener binds a socket of its own (tcpmapd --sk-lookup=off).
	NoSteering bool
	// Log receives what start-up cleaned up; nil discards.
	Log *zap.Logger
}

// AttachMode says how the verdict program is attached to sock_hash.
type AttachMode string

// Attach modes.
const (
	// AttachLink is a BPF_LINK_TYPE_SOCKMAP link (kernel 6.10+), pinned
	// next to the maps, detached when the link goes away.
	AttachLink AttachMode = "bpf_link"
	// AttachLegacy is BPF_PROG_ATTACH on the map; the program stays
	// attached for as long as the map exists.
	AttachLegacy AttachMode = "prog_attach"
)

// Objects owns everything Load created: maps, program, attachment, pins
// and the lock on the pin directory. Close releases all of it.
type Objects struct {
	dir    string
	lock   *os.File
	log    *zap.Logger
	maps   spliceMaps
	prog   *ebpf.Program
	link   link.Link // nil with AttachLegacy
	attach AttachMode

	lookup     lookupMaps
	lookupProg *ebpf.Program
	lookupLink link.Link // nil when steering is off or unsupported
	// steerErr says why sk_lookup steering is unavailable; nil when
	// lookupLink is attached.
	steerErr error
	tables   tables

	// Cleaned lists the stale pinned objects Load removed from a previous
	// run (for logs and tests).
	Cleaned []string
}

// Load checks that the kernel can run the datapath, removes what a dead
// previous process left in the pin directory, loads the program with its
// maps, pins them and attaches the verdict to sock_hash. Any failure
// returns an *UnavailableError and leaves nothing behind.
func Load(opts Options) (_ *Objects, err error) {
	if opts.ForceFailure || os.Getenv(ForceFailEnv) == "1" {
		return nil, &UnavailableError{Reason: ReasonForced,
			Detail: "load failure forced by " + forcedBy(opts)}
	}
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	if opts.MaxSockets == 0 {
		opts.MaxSockets = 131072
	}
	if opts.MaxMappings == 0 {
		opts.MaxMappings = 4096
	}
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}
	if err := checkBPFFS(opts.PinDir); err != nil {
		return nil, err
	}
	// No-op on 5.11+ (memory cgroup accounting); kept for older setups
	// where it turns an obscure EPERM into a working load.
	_ = rlimit.RemoveMemlock()

	o := &Objects{dir: opts.PinDir, log: log}
	defer func() {
		if err != nil {
			err = errors.Join(err, o.Close())
		}
	}()
	if err := o.lockDir(); err != nil {
		return nil, err
	}
	spec, err := loadSplice()
	if err != nil {
		return nil, classify("parse embedded object", err)
	}
	lspec, err := loadLookup()
	if err != nil {
		return nil, classify("parse embedded object", err)
	}
	if err := o.cleanStale(spec, lspec); err != nil {
		return nil, classify("clean stale pins in "+o.dir, err)
	}
	if err := o.load(spec, opts); err != nil {
		return nil, err
	}
	if err := o.attachVerdict(opts.LegacyAttach); err != nil {
		return nil, err
	}
	if err := o.loadLookup(lspec, opts); err != nil {
		return nil, err
	}
	o.tables.init()
	if opts.NoSteering {
		o.steerErr = errors.New("turned off (--sk-lookup=off)")
	} else {
		o.steerErr = o.attachSteering()
	}
	if o.steerErr != nil {
		log.Info("sk_lookup steering unavailable; every listener binds its own socket", zap.Error(o.steerErr))
	}
	return o, nil
}

func forcedBy(opts Options) string {
	if opts.ForceFailure {
		return "Options.ForceFailure"
	}
	return ForceFailEnv + "=1"
}

// lockDir creates the pin directory and takes its lock.
func (o *Objects) lockDir() error {
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return classify("create pin directory "+o.dir, err)
	}
	f, err := os.Open(o.dir)
	if err != nil {
		return classify("open pin directory "+o.dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return &UnavailableError{Reason: ReasonPinDirBusy,
				Detail: o.dir + " is locked by another running process (a second tcpmapd with the same --bpffs?)"}
		}
		return classify("lock pin directory "+o.dir, err)
	}
	o.lock = f
	return nil
}

// cleanStale removes everything a previous process left in the pin
// directory. It is dead (we hold the lock), and so are its sockets: the
// kernel closed them when the process died and removed them from
// sock_hash, so the old maps describe connections that no longer exist
// and there is nothing to adopt. Recreating is the only policy; the
// compatibility check only tells the log whether the leftovers came from
// this build.
func (o *Objects) cleanStale(specs ...*ebpf.CollectionSpec) error {
	entries, err := os.ReadDir(o.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, ent := range entries {
		path := filepath.Join(o.dir, ent.Name())
		var want *ebpf.MapSpec
		for _, spec := range specs {
			if ms, ok := spec.Maps[ent.Name()]; ok {
				want = ms
			}
		}
		what := describePinned(path, want)
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, fmt.Errorf("remove stale %s: %w", path, err))
			continue
		}
		o.Cleaned = append(o.Cleaned, ent.Name())
		o.log.Info("removed stale pinned object of a previous run",
			zap.String("path", path), zap.String("object", what))
	}
	return errors.Join(errs...)
}

// describePinned says what a pinned object is, for the clean-up log.
func describePinned(path string, want *ebpf.MapSpec) string {
	if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
		defer m.Close()
		desc := fmt.Sprintf("map %s", m.Type())
		if want != nil {
			if err := want.Compatible(m); err != nil {
				desc += " (incompatible with this build: " + err.Error() + ")"
			} else {
				desc += " (compatible)"
			}
		}
		return desc
	}
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		defer l.Close()
		if info, err := l.Info(); err == nil {
			return fmt.Sprintf("link type %d", info.Type)
		}
		return "link"
	}
	if p, err := ebpf.LoadPinnedProgram(path, nil); err == nil {
		defer p.Close()
		return fmt.Sprintf("program %s", p.Type())
	}
	return "unknown"
}

// load creates the maps (pinned by name) and loads the program.
func (o *Objects) load(spec *ebpf.CollectionSpec, opts Options) error {
	// unused_event only exists to put struct event into BTF; its .bss map
	// is not referenced by the program and need not exist.
	for name := range spec.Variables {
		delete(spec.Variables, name)
	}
	pinMapsByName(spec)
	for _, name := range []string{spliceMapSockHash, spliceMapPairs, spliceMapDirs, spliceMapCtl} {
		spec.Maps[name].MaxEntries = opts.MaxSockets
	}
	spec.Maps[spliceMapMappingTotals].MaxEntries = opts.MaxMappings

	var objs struct {
		splicePrograms
		spliceMaps
	}
	err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: o.dir},
	})
	if err != nil {
		return classify("load "+spliceProgSpliceVerdict, err)
	}
	o.maps = objs.spliceMaps
	o.prog = objs.SpliceVerdict
	if err := o.prog.Pin(filepath.Join(o.dir, pinProgram)); err != nil {
		return classify("pin program", errPinned(pinProgram, err))
	}
	return nil
}

// attachVerdict attaches the verdict to sock_hash: as a pinned bpf_link
// where the kernel supports sockmap links (6.10+), else with the legacy
// BPF_PROG_ATTACH. Trying the link is the probe: an older kernel answers
// EINVAL for the unknown attach type.
func (o *Objects) attachVerdict(legacy bool) error {
	if !legacy {
		l, err := link.AttachRawLink(link.RawLinkOptions{
			Target:  o.maps.SockHash.FD(),
			Program: o.prog,
			Attach:  ebpf.AttachSkSKBStreamVerdict,
		})
		if err == nil {
			o.link = l
			o.attach = AttachLink
			if err := l.Pin(filepath.Join(o.dir, pinLink)); err != nil {
				return classify("pin link", errPinned(pinLink, err))
			}
			return nil
		}
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, ebpf.ErrNotSupported) &&
			!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, errENOTSUPP) {
			return classify("attach verdict link", err)
		}
		o.log.Info("sockmap bpf_link not supported by this kernel; using legacy attach", zap.Error(err))
	}
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  o.maps.SockHash.FD(),
		Program: o.prog,
		Attach:  ebpf.AttachSkSKBStreamVerdict,
	})
	if err != nil {
		return classify("attach verdict", err)
	}
	o.attach = AttachLegacy
	return nil
}

// PinDir is the directory the objects are pinned in.
func (o *Objects) PinDir() string { return o.dir }

// Attach says how the verdict is attached.
func (o *Objects) Attach() AttachMode { return o.attach }

// Close detaches the verdict, unpins and closes every object, removes the
// pin directory and releases its lock. It reports every failure, joined,
// and is safe on a partly loaded Objects.
func (o *Objects) Close() error {
	var errs []error
	if o.link != nil {
		errs = append(errs, releaseLink(o.link, "link"))
		o.link = nil
	} else if o.attach == AttachLegacy {
		err := link.RawDetachProgram(link.RawDetachProgramOptions{
			Target:  o.maps.SockHash.FD(),
			Program: o.prog,
			Attach:  ebpf.AttachSkSKBStreamVerdict,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("detach verdict: %w", err))
		}
	}
	o.attach = ""
	errs = append(errs, releaseProgram(o.prog))
	o.prog = nil
	errs = append(errs, o.releaseMaps(o.maps.SockHash, o.maps.Pairs, o.maps.Dirs, o.maps.Ctl,
		o.maps.MappingTotals, o.maps.Events, o.maps.Stats))
	o.maps = spliceMaps{}
	errs = append(errs, o.closeLookup())
	if o.lock != nil {
		// We hold the lock, so whatever is still pinned is ours: the maps
		// a load that failed midway had pinned before it could hand them
		// over (a program the verifier rejected, say).
		if ents, err := os.ReadDir(o.dir); err == nil {
			for _, e := range ents {
				if err := os.RemoveAll(filepath.Join(o.dir, e.Name())); err != nil {
					errs = append(errs, fmt.Errorf("remove leftover pin: %w", err))
				}
			}
		}
		if err := os.Remove(o.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
		}
		if err := o.lock.Close(); err != nil {
			errs = append(errs, fmt.Errorf("unlock pin directory: %w", err))
		}
		o.lock = nil
	}
	return errors.Join(errs...)
}
