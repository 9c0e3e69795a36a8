package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// loadLookup creates the listener tables (pinned by name) and loads the
// sk_lookup program. The tables are loaded even when steering is off: they
// are how bpftool shows what the node serves.
func (o *Objects) loadLookup(spec *ebpf.CollectionSpec, opts Options) error {
	pinMapsByName(spec)
	spec.Maps[lookupMapMappings].MaxEntries = opts.MaxMappings
	var objs lookupObjects
	err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: o.dir},
	})
	if err != nil {
		return classify("load "+lookupProgSteerListener, err)
	}
	o.lookup = objs.lookupMaps
	o.lookupProg = objs.SteerListener
	if err := o.lookupProg.Pin(filepath.Join(o.dir, pinLookupProgram)); err != nil {
		return classify("pin program", errPinned(pinLookupProgram, err))
	}
	return nil
}

// attachSteering attaches the sk_lookup program to the calling thread's
// network namespace (the daemon's) and pins the link. An error says why
// steering is unavailable; it is not fatal: listeners then bind a socket
// each, as without BPF.
func (o *Objects) attachSteering() error {
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer ns.Close()
	l, err := link.AttachNetNs(int(ns.Fd()), o.lookupProg)
	if err != nil {
		return fmt.Errorf("attach sk_lookup (kernel 5.9+): %w", err)
	}
	if err := l.Pin(filepath.Join(o.dir, pinLookupLink)); err != nil {
		l.Close()
		return fmt.Errorf("pin sk_lookup link: %w", errPinned(pinLookupLink, err))
	}
	o.lookupLink = l
	return nil
}

// Steering reports whether the sk_lookup program is attached, and if not,
// why.
func (o *Objects) Steering() (bool, error) { return o.lookupLink != nil, o.steerErr }

func (o *Objects) closeLookup() error {
	var errs []error
	if o.lookupLink != nil {
		errs = append(errs, releaseLink(o.lookupLink, "sk_lookup link"))
		o.lookupLink = nil
	}
	errs = append(errs, releaseProgram(o.lookupProg))
	o.lookupProg = nil
	errs = append(errs, o.releaseMaps(o.lookup.Listeners, o.lookup.Mappings, o.lookup.ListenSocks, o.lookup.ListenerStats))
	o.lookup = lookupMaps{}
	return errors.Join(errs...)
}

// pinMapsByName makes every map of spec pinned under its name in the pin
// directory, and drops the sections' internal maps (.bss, .rodata), which
// the programs do not use.
func pinMapsByName(spec *ebpf.CollectionSpec) {
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			delete(spec.Maps, name)
			continue
		}
		ms.Pinning = ebpf.PinByName
	}
}

// releaseLink unpins and closes (detaches) a link.
func releaseLink(l link.Link, what string) error {
	var errs []error
	if err := l.Unpin(); err != nil {
		errs = append(errs, fmt.Errorf("unpin %s: %w", what, err))
	}
	if err := l.Close(); err != nil {
		errs = append(errs, fmt.Errorf("detach %s: %w", what, err))
	}
	return errors.Join(errs...)
}

// releaseProgram unpins and closes a program; nil is a no-op.
func releaseProgram(p *ebpf.Program) error {
	if p == nil {
		return nil
	}
	var errs []error
	if err := p.Unpin(); err != nil {
		errs = append(errs, fmt.Errorf("unpin program: %w", err))
	}
	if err := p.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close program: %w", err))
	}
	return errors.Join(errs...)
}

// releaseMaps unpins and closes maps; nil ones are skipped.
func (o *Objects) releaseMaps(maps ...*ebpf.Map) error {
	var errs []error
	for _, m := range maps {
		if m == nil {
			continue
		}
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", o.name(m), err))
		}
		if err := m.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close map %s: %w", o.name(m), err))
		}
	}
	return errors.Join(errs...)
}
