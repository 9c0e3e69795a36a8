package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// loadLookup creates the listener tables (pinned by name) and loads the
// sk_lookup program. The tables are loaded even when steering is off: they
// are how bpftool shows what the node serves.
func (o *Objects) loadLookup(spec *ebpf.CollectionSpec, opts Options) error {
	for name, ms := range spec.Maps {
		if len(name) > 0 && name[0] == '.' {
			delete(spec.Maps, name)
			continue
		}
		ms.Pinning = ebpf.PinByName
	}
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
		if err := o.lookupLink.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin sk_lookup link: %w", err))
		}
		if err := o.lookupLink.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach sk_lookup link: %w", err))
		}
		o.lookupLink = nil
	}
	if o.lookupProg != nil {
		if err := o.lookupProg.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin program: %w", err))
		}
		if err := o.lookupProg.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close program: %w", err))
		}
		o.lookupProg = nil
	}
	for _, m := range []*ebpf.Map{o.lookup.Listeners, o.lookup.Mappings, o.lookup.ListenSocks, o.lookup.ListenerStats} {
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
	o.lookup = lookupMaps{}
	return errors.Join(errs...)
}
