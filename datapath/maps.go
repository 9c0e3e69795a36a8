package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Mode is what the verdict does with a direction's bytes.
type Mode uint32

// Modes of a direction.
const (
	// ModeRedirect: the verdict redirects the bytes to the peer socket's
	// send path in the kernel.
	ModeRedirect = Mode(spliceDirModeDIR_REDIRECT)
	// ModePass: the verdict leaves the bytes on the receiving socket for
	// userspace to copy (bounded memory, real back-pressure).
	ModePass = Mode(spliceDirModeDIR_PASS)
)

func (m Mode) String() string {
	switch m {
	case ModeRedirect:
		return "redirect"
	case ModePass:
		return "pass"
	}
	return fmt.Sprintf("mode(%d)", uint32(m))
}

// PassReason is why a direction last entered ModePass.
type PassReason uint32

// Reasons for pass mode.
const (
	PassNone           = PassReason(splicePassReasonPASS_NONE)
	PassGap            = PassReason(splicePassReasonPASS_GAP)
	PassPeerMissing    = PassReason(splicePassReasonPASS_PEER_MISSING)
	PassRedirectFailed = PassReason(splicePassReasonPASS_REDIRECT_FAILED)
	PassPeerFull       = PassReason(splicePassReasonPASS_PEER_FULL)
)

func (r PassReason) String() string {
	switch r {
	case PassNone:
		return ""
	case PassGap:
		return "redirected bytes not yet sent reached the bound"
	case PassPeerMissing:
		return "peer socket not in sock_hash"
	case PassRedirectFailed:
		return "redirect refused"
	case PassPeerFull:
		return "peer send buffer full"
	}
	return fmt.Sprintf("reason(%d)", uint32(r))
}

// PairFlags tune one direction's verdict.
type PairFlags uint32

// PairPeerRoom makes the verdict pass instead of redirecting when the
// peer's send buffer has no room for the bytes (see bpf/splice.c).
const PairPeerRoom PairFlags = 1

// PairConfig is one direction's fixed configuration (map pairs).
type PairConfig struct {
	Peer      uint64 // cookie of the socket the bytes go to
	MappingID uint32
	Bound     uint32 // most bytes redirected but not yet in the peer's write queue
	Flags     PairFlags
}

// Dir is one direction's state and counters as the verdict keeps them
// (map dirs). The direction is named by its source socket's cookie.
type Dir struct {
	Redirected uint64 // bytes redirected in the kernel
	Passed     uint64 // bytes handed to userspace
	Packets    uint64 // skbs with payload
	// LastActiveNs is CLOCK_MONOTONIC (bpf_ktime_get_ns) of the last skb
	// with payload; 0 before the first. Compare with MonotonicNow.
	LastActiveNs uint64
	MaxGap       uint64 // largest redirected-but-unsent gap seen
	LastGap      uint32
	Mode         Mode
	PassGen      uint32 // pass episodes so far
	Resumes      uint32 // returns from pass to redirect
	PassReason   PassReason
	ZeroLen      uint32 // zero-length skbs (bare FIN) dropped
}

// Ctl is one direction's userspace-owned control word (map ctl).
type Ctl struct {
	// UserWritten counts passed bytes userspace has read and completely
	// written to the peer.
	UserWritten uint64
	// ResumeGen asks the verdict to resume redirecting once
	// UserWritten == Dir.Passed, for the pass episode Dir.PassGen.
	ResumeGen uint32
}

// MappingTotal is one mapping's traffic summed over CPUs.
type MappingTotal struct {
	Bytes       uint64 // both directions, redirected or passed
	Packets     uint64
	PassedBytes uint64 // of Bytes, those copied by userspace
}

// ProgStats are program-wide counters summed over CPUs.
type ProgStats struct {
	NoPair     uint64 // skbs on sockets without a pair (left to the socket)
	EventsLost uint64 // pass events the ring buffer had no room for
}

// Event says that the direction whose source socket has Cookie entered
// pass episode PassGen.
type Event struct {
	Cookie  uint64
	PassGen uint32
}

// MonotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of
// Dir.LastActiveNs.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// SinceActive is how long ago a Dir.LastActiveNs was.
func SinceActive(lastActiveNs uint64) time.Duration {
	return time.Duration(MonotonicNow() - lastActiveNs)
}

func dirFromBPF(v spliceDirState) Dir {
	return Dir{
		Redirected: v.Redirected, Passed: v.Passed, Packets: v.Packets,
		LastActiveNs: v.LastActiveNs, MaxGap: v.MaxGap, LastGap: v.LastGap,
		Mode: Mode(v.Mode), PassGen: v.PassGen, Resumes: v.Resumes,
		PassReason: PassReason(v.PassReason), ZeroLen: v.ZeroLen,
	}
}

// Pair writes the configuration of both directions of a client/upstream
// pair and creates their zeroed state and control words: one batch
// update per map, the cheapest way on the hand-off path (batch updates
// cannot refuse existing keys; cookies are unique per socket and the
// engine pairs a socket once). It must run before the sockets enter
// sock_hash, so that the verdict finds its pair from the first byte. On
// error it removes what it inserted.
func (o *Objects) Pair(client, upstream uint64, mappingID, bound uint32, flags PairFlags) (err error) {
	keys := []uint64{client, upstream}
	var done []*ebpf.Map
	defer func() {
		if err != nil {
			for _, m := range done {
				_ = deleteKeys(m, keys)
			}
		}
	}()
	batch := &ebpf.BatchOptions{}
	for _, u := range []struct {
		m      *ebpf.Map
		values any
	}{
		{o.maps.Pairs, []splicePair{
			{Peer: upstream, MappingId: mappingID, Bound: bound, Flags: uint32(flags)},
			{Peer: client, MappingId: mappingID, Bound: bound, Flags: uint32(flags)},
		}},
		{o.maps.Dirs, make([]spliceDirState, 2)},
		{o.maps.Ctl, make([]spliceDirCtl, 2)},
	} {
		n, err := u.m.BatchUpdate(keys, u.values, batch)
		if n > 0 || err == nil {
			done = append(done, u.m)
		}
		if err != nil {
			return fmt.Errorf("%s: insert cookies %d, %d: %w", o.name(u.m), client, upstream, err)
		}
	}
	return nil
}

// deleteKeys deletes keys from m, ignoring missing ones: one batch
// delete, or one by one when the batch stops at a missing key.
func deleteKeys(m *ebpf.Map, keys []uint64) error {
	if n, err := m.BatchDelete(keys, nil); err == nil && n == len(keys) {
		return nil
	}
	var errs []error
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete cookie %d: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// AddSocket inserts a socket into sock_hash under its cookie. From then
// on the verdict runs for every skb the socket receives. The socket must
// be ESTABLISHED.
func (o *Objects) AddSocket(cookie uint64, fd int) error {
	if err := o.maps.SockHash.Update(cookie, uint64(fd), ebpf.UpdateNoExist); err != nil {
		return fmt.Errorf("sock_hash: insert cookie %d: %w", cookie, err)
	}
	return nil
}

// RemoveSocket deletes a socket from sock_hash. Only for a socket the
// verdict has not yet touched: removing a live socket drops its psock and
// with it every byte queued there.
func (o *Objects) RemoveSocket(cookie uint64) error {
	if err := o.maps.SockHash.Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("sock_hash: delete cookie %d: %w", cookie, err)
	}
	return nil
}

// Unpair deletes every entry of the given sockets, sock_hash included
// (for sockets a failed hand-off left open). Missing entries are not an
// error.
func (o *Objects) Unpair(cookies ...uint64) error {
	return o.unpair(cookies, o.maps.SockHash, o.maps.Pairs, o.maps.Dirs, o.maps.Ctl)
}

// Forget deletes the pairs, dirs and ctl entries of closed sockets
// (closing a socket removes it from sock_hash already). Deleting the
// entries of a live socket would leave its bytes to SK_PASS.
func (o *Objects) Forget(cookies ...uint64) error {
	return o.unpair(cookies, o.maps.Pairs, o.maps.Dirs, o.maps.Ctl)
}

func (o *Objects) unpair(cookies []uint64, maps ...*ebpf.Map) error {
	var errs []error
	for _, m := range maps {
		if err := deleteKeys(m, cookies); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.name(m), err))
		}
	}
	return errors.Join(errs...)
}

// Dir reads one direction's state, named by its source socket's cookie.
func (o *Objects) Dir(cookie uint64) (Dir, error) {
	var v spliceDirState
	if err := o.maps.Dirs.Lookup(cookie, &v); err != nil {
		return Dir{}, fmt.Errorf("dirs: lookup cookie %d: %w", cookie, err)
	}
	return dirFromBPF(v), nil
}

// SetCtl writes one direction's control word. It only updates an
// existing entry, so a late write after Unpair cannot resurrect one.
func (o *Objects) SetCtl(cookie uint64, c Ctl) error {
	v := spliceDirCtl{UserWritten: c.UserWritten, ResumeGen: c.ResumeGen}
	if err := o.maps.Ctl.Update(cookie, &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("ctl: update cookie %d: %w", cookie, err)
	}
	return nil
}

// EnsureMapping creates the zeroed totals of a mapping id if missing.
func (o *Objects) EnsureMapping(id uint32) error {
	zero := make([]spliceMappingTotal, ebpf.MustPossibleCPU())
	err := o.maps.MappingTotals.Update(id, zero, ebpf.UpdateNoExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("mapping_totals: insert id %d: %w", id, err)
	}
	return nil
}

// MappingTotals sums every mapping's per-CPU totals.
func (o *Objects) MappingTotals() (map[uint32]MappingTotal, error) {
	return sumPerCPU(o.maps.MappingTotals, spliceMapMappingTotals, func(t *MappingTotal, v spliceMappingTotal) {
		t.Bytes += v.Bytes
		t.Packets += v.Packets
		t.PassedBytes += v.PassedBytes
	})
}

// sumPerCPU reads a per-CPU hash keyed by a uint32 id and folds each key's
// per-CPU values into one S with add.
func sumPerCPU[V, S any](m *ebpf.Map, name string, add func(*S, V)) (map[uint32]S, error) {
	out := map[uint32]S{}
	var id uint32
	var perCPU []V
	it := m.Iterate()
	for it.Next(&id, &perCPU) {
		var s S
		for _, v := range perCPU {
			add(&s, v)
		}
		out[id] = s
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: iterate: %w", name, err)
	}
	return out, nil
}

// Stats sums the program-wide counters.
func (o *Objects) Stats() (ProgStats, error) {
	var perCPU []spliceProgStats
	if err := o.maps.Stats.Lookup(uint32(0), &perCPU); err != nil {
		return ProgStats{}, fmt.Errorf("stats: lookup: %w", err)
	}
	var s ProgStats
	for _, v := range perCPU {
		s.NoPair += v.NoPair
		s.EventsLost += v.EventsLost
	}
	return s, nil
}

// name is a map's name in bpf/splice.c, for errors.
func (o *Objects) name(m *ebpf.Map) string {
	switch m {
	case o.maps.SockHash:
		return spliceMapSockHash
	case o.maps.Pairs:
		return spliceMapPairs
	case o.maps.Dirs:
		return spliceMapDirs
	case o.maps.Ctl:
		return spliceMapCtl
	case o.maps.MappingTotals:
		return spliceMapMappingTotals
	case o.maps.Events:
		return spliceMapEvents
	case o.maps.Stats:
		return spliceMapStats
	case o.lookup.Listeners:
		return lookupMapListeners
	case o.lookup.Mappings:
		return lookupMapMappings
	case o.lookup.ListenSocks:
		return lookupMapListenSocks
	case o.lookup.ListenerStats:
		return lookupMapListenerStats
	}
	return m.String()
}

// readAll dumps a map whose key and value types are known.
func readAll[K comparable, V any](name string, m *ebpf.Map) (map[K]V, error) {
	out := map[K]V{}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: iterate: %w", name, err)
	}
	return out, nil
}

// DumpPairs returns every pairs entry, by source cookie.
func (o *Objects) DumpPairs() (map[uint64]PairConfig, error) {
	raw, err := readAll[uint64, splicePair](o.name(o.maps.Pairs), o.maps.Pairs)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]PairConfig, len(raw))
	for k, v := range raw {
		out[k] = PairConfig{Peer: v.Peer, MappingID: v.MappingId, Bound: v.Bound, Flags: PairFlags(v.Flags)}
	}
	return out, nil
}

// DumpDirs returns every dirs entry, by source cookie.
func (o *Objects) DumpDirs() (map[uint64]Dir, error) {
	raw, err := readAll[uint64, spliceDirState](o.name(o.maps.Dirs), o.maps.Dirs)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]Dir, len(raw))
	for k, v := range raw {
		out[k] = dirFromBPF(v)
	}
	return out, nil
}

// DumpCtl returns every ctl entry, by source cookie.
func (o *Objects) DumpCtl() (map[uint64]Ctl, error) {
	raw, err := readAll[uint64, spliceDirCtl](o.name(o.maps.Ctl), o.maps.Ctl)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]Ctl, len(raw))
	for k, v := range raw {
		out[k] = Ctl{UserWritten: v.UserWritten, ResumeGen: v.ResumeGen}
	}
	return out, nil
}

// DumpSockets returns the cookies in sock_hash (a userspace lookup of a
// sockhash returns the socket's cookie, which is also the key).
func (o *Objects) DumpSockets() ([]uint64, error) {
	raw, err := readAll[uint64, uint64](o.name(o.maps.SockHash), o.maps.SockHash)
	if err != nil {
		return nil, err
	}
	out := make([]uint64, 0, len(raw))
	for k := range raw {
		out = append(out, k)
	}
	return out, nil
}

// EventReader reads pass events from the events ring buffer.
type EventReader struct {
	r   *ringbuf.Reader
	rec ringbuf.Record
}

// NewEventReader opens the events ring buffer. Only one reader should
// exist at a time.
func (o *Objects) NewEventReader() (*EventReader, error) {
	r, err := ringbuf.NewReader(o.maps.Events)
	if err != nil {
		return nil, fmt.Errorf("events: open ring buffer: %w", err)
	}
	return &EventReader{r: r}, nil
}

// Read blocks until the next event. After Close it returns an error
// wrapping os.ErrClosed.
func (r *EventReader) Read() (Event, error) {
	for {
		if err := r.r.ReadInto(&r.rec); err != nil {
			return Event{}, err
		}
		raw := r.rec.RawSample
		if len(raw) < 16 || spliceEventKind(binary.NativeEndian.Uint32(raw[8:])) != spliceEventKindEVENT_PASS {
			continue
		}
		return Event{Cookie: binary.NativeEndian.Uint64(raw), PassGen: binary.NativeEndian.Uint32(raw[12:])}, nil
	}
}

// Close unblocks Read and releases the ring buffer.
func (r *EventReader) Close() error { return r.r.Close() }
