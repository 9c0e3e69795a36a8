package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// MappingFlags say how the daemon carries a mapping (struct mapping).
type MappingFlags uint32

// Mapping flags, as in bpf/lookup.c.
const (
	MappingSplice       MappingFlags = 1 // cleartext passthrough, eligible for the kernel splice
	MappingTLSTerminate MappingFlags = 2
	MappingTLSOriginate MappingFlags = 4
	MappingProxyOut     MappingFlags = 8
)

// Listener flags, as in bpf/lookup.c.
const (
	listenerTLS       = 1
	listenerProxy     = 2
	listenerTruncated = 4
	listenerSteered   = 8
)

// listenerMappings is the size of struct listener's mapping_ids.
const listenerMappings = 16

// Shared listening sockets, the keys of listen_socks.
const (
	SocketIPv4 = int(lookupListenSocketLISTEN_IPV4)
	SocketIPv6 = int(lookupListenSocketLISTEN_IPV6)
)

// Endpoint is one (address, port) a listener serves. An unspecified
// address (0.0.0.0 or ::) matches every address of its family.
type Endpoint struct {
	Addr netip.Addr
	Port uint16
}

// Socket is the listen_socks entry that serves the endpoint's family.
func (e Endpoint) Socket() int {
	if e.Addr.Is4() {
		return SocketIPv4
	}
	return SocketIPv6
}

func (e Endpoint) key() lookupListenerKey {
	k := lookupListenerKey{Family: unix.AF_INET6, Port: uint32(e.Port)}
	if e.Addr.Is4() {
		k.Family = unix.AF_INET
		a := e.Addr.As4()
		copy(k.Addr[:], a[:])
	} else {
		k.Addr = e.Addr.As16()
	}
	return k
}

func (k lookupListenerKey) endpoint() Endpoint {
	e := Endpoint{Port: uint16(k.Port)}
	if k.Family == unix.AF_INET {
		e.Addr = netip.AddrFrom4([4]byte(k.Addr[:4]))
	} else {
		e.Addr = netip.AddrFrom16(k.Addr)
	}
	return e
}

// ListenerTable is one listener of the resolved configuration: what the
// manager syncs into the listeners and mappings maps.
type ListenerTable struct {
	// Name identifies the listener ("127.0.0.1:7000", "*:7000"); its id
	// stays the same for the daemon's life.
	Name      string
	Endpoints []Endpoint
	TLS       bool
	Proxy     bool
	Mappings  []MappingTable
}

// MappingTable is one mapping of a listener.
type MappingTable struct {
	Name        string // "namespace/name"; its id is the key in mappings and mapping_totals
	Host        string
	Upstream    string
	Weight      uint32
	Flags       MappingFlags
	IdleTimeout time.Duration
}

// tables is the daemon's copy of the listeners map, so that the two
// writers (SyncTables for the configuration, Steer/Unsteer for the shared
// sockets) each change only their own fields of an entry.
type tables struct {
	mu          sync.Mutex
	listenerIDs ids
	mappingIDs  ids
	entries     map[lookupListenerKey]*tableEntry
	mappings    map[uint32]bool // ids present in the mappings map
}

type tableEntry struct {
	value   lookupListener
	inTable bool // the configuration has the listener
	steered bool // the sk_lookup program assigns it to a shared socket
}

func (t *tables) init() {
	t.listenerIDs = ids{byName: map[string]uint32{}}
	t.mappingIDs = ids{byName: map[string]uint32{}}
	t.entries = map[lookupListenerKey]*tableEntry{}
	t.mappings = map[uint32]bool{}
}

// ids assigns dense ids, from 1, to names, and never reuses one.
type ids struct {
	byName map[string]uint32
	names  []string // names[id-1]
}

// idFor returns name's id, assigning the next one on first use.
func (t *ids) idFor(name string) uint32 {
	if id, ok := t.byName[name]; ok {
		return id
	}
	t.names = append(t.names, name)
	id := uint32(len(t.names))
	t.byName[name] = id
	return id
}

// name is the name id was assigned to, or "".
func (t *ids) name(id uint32) string {
	if id == 0 || int(id) > len(t.names) {
		return ""
	}
	return t.names[id-1]
}

// MappingID returns the id of a mapping name, the key of its entries in
// mappings and mapping_totals, assigning one and creating its zeroed
// totals on first use. Ids are never reused while the daemon runs, so the
// kernel's totals of a removed and re-added mapping continue.
func (o *Objects) MappingID(name string) (uint32, error) {
	o.tables.mu.Lock()
	defer o.tables.mu.Unlock()
	return o.mappingIDLocked(name)
}

func (o *Objects) mappingIDLocked(name string) (uint32, error) {
	_, known := o.tables.mappingIDs.byName[name]
	id := o.tables.mappingIDs.idFor(name)
	if !known {
		if err := o.EnsureMapping(id); err != nil {
			return 0, err
		}
	}
	return id, nil
}

// ListenerName is the name a listener id was assigned to, or "".
func (o *Objects) ListenerName(id uint32) string {
	o.tables.mu.Lock()
	defer o.tables.mu.Unlock()
	return o.tables.listenerIDs.name(id)
}

// SyncTables makes the listeners and mappings maps describe exactly the
// given listeners: entries are updated in place, new ones inserted, and
// those no longer configured deleted (unless a shared socket still serves
// them, until Unsteer).
func (o *Objects) SyncTables(listeners []ListenerTable) error {
	t := &o.tables
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	wantMappings := map[uint32]lookupMapping{}
	wantEntries := map[lookupListenerKey]lookupListener{}
	for _, l := range listeners {
		v := lookupListener{Id: t.listenerIDs.idFor(l.Name), N_mappings: uint32(len(l.Mappings))}
		if l.TLS {
			v.Flags |= listenerTLS
		}
		if l.Proxy {
			v.Flags |= listenerProxy
		}
		if len(l.Mappings) > listenerMappings {
			v.Flags |= listenerTruncated
		}
		for i, m := range l.Mappings {
			id, err := o.mappingIDLocked(m.Name)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if i < listenerMappings {
				v.MappingIds[i] = id
			}
			mv := lookupMapping{ListenerId: v.Id, Weight: m.Weight, Flags: uint32(m.Flags),
				IdleTimeoutMs: uint32(m.IdleTimeout / time.Millisecond)}
			putString(mv.Name[:], m.Name)
			putString(mv.Host[:], m.Host)
			putString(mv.Upstream[:], m.Upstream)
			wantMappings[id] = mv
		}
		for _, ep := range l.Endpoints {
			wantEntries[ep.key()] = v
		}
	}

	for k, e := range t.entries {
		if _, ok := wantEntries[k]; !ok && e.inTable {
			e.inTable = false
			errs = append(errs, o.writeEntry(k, e))
		}
	}
	for k, v := range wantEntries {
		e := t.entries[k]
		if e == nil {
			e = &tableEntry{}
			t.entries[k] = e
		}
		steeredSocket := e.value.Socket
		e.value = v
		e.value.Socket = steeredSocket
		e.inTable = true
		errs = append(errs, o.writeEntry(k, e))
	}
	for id, mv := range wantMappings {
		if err := o.lookup.Mappings.Update(id, mv, ebpf.UpdateAny); err != nil {
			errs = append(errs, fmt.Errorf("mappings: update id %d: %w", id, err))
			continue
		}
		t.mappings[id] = true
	}
	for id := range t.mappings {
		if _, ok := wantMappings[id]; ok {
			continue
		}
		if err := o.lookup.Mappings.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("mappings: delete id %d: %w", id, err))
			continue
		}
		delete(t.mappings, id)
	}
	return errors.Join(errs...)
}

// Steer makes the sk_lookup program assign new connections to ep to the
// shared socket of ep's family; name is the listener's (as in
// ListenerTable) so the entry carries its id before the next sync.
func (o *Objects) Steer(name string, ep Endpoint) error {
	t := &o.tables
	t.mu.Lock()
	defer t.mu.Unlock()
	k := ep.key()
	e := t.entries[k]
	if e == nil {
		e = &tableEntry{}
		t.entries[k] = e
	}
	e.value.Id = t.listenerIDs.idFor(name)
	e.value.Socket = lookupListenSocket(ep.Socket())
	e.steered = true
	return o.writeEntry(k, e)
}

// Unsteer stops steering ep: its new connections find no socket and are
// refused, as when a listening socket closes.
func (o *Objects) Unsteer(ep Endpoint) error {
	t := &o.tables
	t.mu.Lock()
	defer t.mu.Unlock()
	k := ep.key()
	e := t.entries[k]
	if e == nil {
		return nil
	}
	e.steered = false
	return o.writeEntry(k, e)
}

// writeEntry writes or deletes one listeners entry from its copy.
func (o *Objects) writeEntry(k lookupListenerKey, e *tableEntry) error {
	if !e.inTable && !e.steered {
		delete(o.tables.entries, k)
		err := o.lookup.Listeners.Delete(k)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("listeners: delete %v: %w", k.endpoint(), err)
		}
		return nil
	}
	v := e.value
	v.Flags &^= listenerSteered
	if e.steered {
		v.Flags |= listenerSteered
	}
	if err := o.lookup.Listeners.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("listeners: update %v: %w", k.endpoint(), err)
	}
	return nil
}

// SetListenSocket puts the shared listening socket of a family (SocketIPv4
// or SocketIPv6) into listen_socks.
func (o *Objects) SetListenSocket(socket int, fd int) error {
	if err := o.lookup.ListenSocks.Update(uint32(socket), uint64(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("listen_socks: insert socket %d: %w", socket, err)
	}
	return nil
}

// ListenerDump is one entry of the listeners map.
type ListenerDump struct {
	Endpoint   Endpoint
	ID         uint32
	Socket     int
	TLS        bool
	Proxy      bool
	Steered    bool
	Truncated  bool
	Mappings   int      // routes of the listener
	MappingIDs []uint32 // the first of them
}

// Listeners reads the listeners map, sorted by port, then address.
func (o *Objects) Listeners() ([]ListenerDump, error) {
	var out []ListenerDump
	var k lookupListenerKey
	var v lookupListener
	it := o.lookup.Listeners.Iterate()
	for it.Next(&k, &v) {
		d := ListenerDump{Endpoint: k.endpoint(), ID: v.Id, Socket: int(v.Socket),
			TLS: v.Flags&listenerTLS != 0, Proxy: v.Flags&listenerProxy != 0,
			Steered: v.Flags&listenerSteered != 0, Truncated: v.Flags&listenerTruncated != 0,
			Mappings: int(v.N_mappings)}
		for i := 0; i < int(min(v.N_mappings, listenerMappings)); i++ {
			d.MappingIDs = append(d.MappingIDs, v.MappingIds[i])
		}
		out = append(out, d)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listeners: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Endpoint.Port != out[j].Endpoint.Port {
			return out[i].Endpoint.Port < out[j].Endpoint.Port
		}
		return out[i].Endpoint.Addr.Less(out[j].Endpoint.Addr)
	})
	return out, nil
}

// MappingDump is one entry of the mappings map.
type MappingDump struct {
	ListenerID  uint32
	Name        string
	Host        string
	Upstream    string
	Weight      uint32
	Flags       MappingFlags
	IdleTimeout time.Duration
}

// Mappings reads the mappings map by id.
func (o *Objects) Mappings() (map[uint32]MappingDump, error) {
	out := map[uint32]MappingDump{}
	var id uint32
	var v lookupMapping
	it := o.lookup.Mappings.Iterate()
	for it.Next(&id, &v) {
		out[id] = MappingDump{ListenerID: v.ListenerId, Name: getString(v.Name[:]), Host: getString(v.Host[:]),
			Upstream: getString(v.Upstream[:]), Weight: v.Weight, Flags: MappingFlags(v.Flags),
			IdleTimeout: time.Duration(v.IdleTimeoutMs) * time.Millisecond}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("mappings: %w", err)
	}
	return out, nil
}

// ListenerStat is one listener's steering counters, summed over CPUs.
type ListenerStat struct {
	Steered  uint64 // connections assigned to the shared socket
	NoSocket uint64 // matched with no shared socket for the family
	Refused  uint64 // bpf_sk_assign refused
}

// ListenerStats reads listener_stats by listener id.
func (o *Objects) ListenerStats() (map[uint32]ListenerStat, error) {
	return sumPerCPU(o.lookup.ListenerStats, lookupMapListenerStats, func(s *ListenerStat, v lookupListenerStat) {
		s.Steered += v.Steered
		s.NoSocket += v.NoSocket
		s.Refused += v.Refused
	})
}

// putString copies s into a C char array, truncated, NUL-terminated.
func putString(dst []int8, s string) {
	n := min(len(s), len(dst)-1)
	for i := 0; i < n; i++ {
		dst[i] = int8(s[i])
	}
}

func getString(src []int8) string {
	b := make([]byte, 0, len(src))
	for _, c := range src {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}
