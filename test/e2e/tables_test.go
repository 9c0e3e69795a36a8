package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// bpftoolDump runs `bpftool -j map dump pinned DIR/NAME` and decodes it.
func bpftoolDump(t testing.TB, dir, name string, v any) {
	t.Helper()
	out, err := exec.Command("bpftool", "-j", "map", "dump", "pinned", filepath.Join(dir, name)).Output()
	if err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v", name, err)
	}
	// With BTF, bpftool -j prints each entry's raw bytes and, under
	// "formatted", its fields by name; older versions print the fields
	// in place. Keep the named form either way.
	var entries []json.RawMessage
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v\n%s", name, err, out)
	}
	for i, e := range entries {
		var f struct {
			Formatted json.RawMessage `json:"formatted"`
		}
		if json.Unmarshal(e, &f) == nil && len(f.Formatted) > 0 {
			entries[i] = f.Formatted
		}
	}
	named, _ := json.Marshal(entries)
	if err := json.Unmarshal(named, v); err != nil {
		t.Fatalf("bpftool map dump pinned %s: %v\n%s", name, err, out)
	}
}

func requireBpftool(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("bpftool"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("bpftool is required under CI: %v", err)
		}
		t.Skip("bpftool not installed")
	}
}

// The JSON bpftool prints for the maps of bpf/lookup.c and bpf/splice.c,
// with BTF: every field by its C name.
type (
	bpfListenerEntry struct {
		Key struct {
			Family uint32 `json:"family"`
			Port   uint32 `json:"port"`
			Addr   []int  `json:"addr"`
		} `json:"key"`
		Value struct {
			ID         uint32   `json:"id"`
			Socket     string   `json:"socket"`
			Flags      uint32   `json:"flags"`
			NMappings  uint32   `json:"n_mappings"`
			MappingIDs []uint32 `json:"mapping_ids"`
		} `json:"value"`
	}
	bpfMappingEntry struct {
		Key   uint32 `json:"key"`
		Value struct {
			ListenerID uint32 `json:"listener_id"`
			Weight     uint32 `json:"weight"`
			Flags      uint32 `json:"flags"`
			Name       string `json:"name"`
			Host       string `json:"host"`
			Upstream   string `json:"upstream"`
		} `json:"value"`
	}
	// perCPUEntry is a PERCPU map entry: one value per CPU.
	perCPUEntry[V any] struct {
		Key    uint32 `json:"key"`
		Values []struct {
			CPU   int `json:"cpu"`
			Value V   `json:"value"`
		} `json:"values"`
	}
	bpfListenerStat struct {
		Steered uint64 `json:"steered"`
	}
	bpfMappingTotal struct {
		Bytes       uint64 `json:"bytes"`
		Packets     uint64 `json:"packets"`
		PassedBytes uint64 `json:"passed_bytes"`
	}
	bpfPairEntry struct {
		Key   uint64 `json:"key"`
		Value struct {
			Peer      uint64 `json:"peer"`
			MappingID uint32 `json:"mapping_id"`
		} `json:"value"`
	}
)

const listenerSteeredFlag = 8 // LISTENER_F_STEERED in bpf/lookup.c

// TestKernelTablesMatchStatus: `bpftool map dump pinned` on each map
// datapath/README.md documents shows, by field name, what `tcpmapctl
// status` reports: the listeners and their mapping sets, each mapping's
// name, upstream and weight, the connections sk_lookup steered, the
// kernel's byte totals, and the live spliced pairs.
func TestKernelTablesMatchStatus(t *testing.T) {
	requireBpftool(t)
	tp := newTopology(t)
	k := newKernelDaemon(t)
	tp.serveEcho(t, "upstream", 7200, false)
	tp.serveEcho(t, "cockroach", 7200, false)
	tp.serveEcho(t, "upstream-host-1", 7300, false)
	tp.serveEcho(t, "upstream-host-2", 7300, false)
	tp.serveEcho(t, "upstream-host", 7300, false)
	tp.serveEcho(t, "upstream-host-1", 9999, false)
	tp.serveEcho(t, "upstream-host-2", 9999, false)
	cfg := configDir(t, []string{"policy/weights.yaml", "docs/terminate.yaml"}, nil)
	tp.start(t, k.args([]string{cfg})...)
	ctx := testContext(t, 2*time.Minute)

	// Traffic: 10 connections through the canary pair, each echoing a
	// line, all closed; two more held open so that pairs has entries.
	const conns = 10
	for i := 0; i < conns; i++ {
		c, err := tp.connect(ctx, proxyAddr(7200))
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatalf("greeting %d: %v", i, err)
		}
		if _, err := io.WriteString(c, "through the kernel\n"); err != nil {
			t.Fatal(err)
		}
		if got, err := br.ReadString('\n'); err != nil || got != "through the kernel\n" {
			t.Fatalf("echo %d: %q, %v", i, got, err)
		}
		c.Close()
	}
	waitUntil(t, ctx, "the 10 connections to end", func() bool {
		for _, l := range k.status(t).Listeners {
			if l.Key == "*:7200" {
				return l.Active == 0 && l.Accepted == conns
			}
		}
		return false
	})
	var held []io.Closer
	for i := 0; i < 2; i++ {
		c, err := tp.connect(ctx, proxyAddr(7300))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitUntil(t, ctx, "both held connections spliced", func() bool { return k.status(t).Kernel.Pairs == 2 })

	s := k.status(t)
	if s.BPF == nil || s.BPF.Steering != "sk_lookup" {
		t.Fatalf("status BPF = %+v, want sk_lookup steering", s.BPF)
	}

	var listeners []bpfListenerEntry
	bpftoolDump(t, k.pinDir, "listeners", &listeners)
	var mappings []bpfMappingEntry
	bpftoolDump(t, k.pinDir, "mappings", &mappings)
	var lstats []perCPUEntry[bpfListenerStat]
	bpftoolDump(t, k.pinDir, "listener_stats", &lstats)
	var totals []perCPUEntry[bpfMappingTotal]
	bpftoolDump(t, k.pinDir, "mapping_totals", &totals)
	var pairs []bpfPairEntry
	bpftoolDump(t, k.pinDir, "pairs", &pairs)

	mappingByID := map[uint32]bpfMappingEntry{}
	for _, m := range mappings {
		mappingByID[m.Key] = m
	}
	steeredByID := map[uint32]uint64{}
	for _, e := range lstats {
		for _, v := range e.Values {
			steeredByID[e.Key] += v.Value.Steered
		}
	}
	bytesByID := map[uint32]uint64{}
	for _, e := range totals {
		for _, v := range e.Values {
			bytesByID[e.Key] += v.Value.Bytes
		}
	}

	statusMappings := 0
	for _, l := range s.Listeners {
		if l.BPF == nil {
			t.Errorf("listener %s: no BPF entry in status", l.Key)
			continue
		}
		// Every endpoint of the listener is a key of listeners holding
		// its id, its steering and its mapping set.
		var entries []bpfListenerEntry
		for _, e := range listeners {
			if e.Value.ID == l.BPF.ID {
				entries = append(entries, e)
			}
		}
		if len(entries) != len(l.BPF.Endpoints) || len(entries) == 0 {
			t.Errorf("listener %s: %d entries with id %d in listeners, status shows endpoints %v",
				l.Key, len(entries), l.BPF.ID, l.BPF.Endpoints)
		}
		var wantIDs []uint32
		for _, m := range l.Mappings {
			wantIDs = append(wantIDs, m.BPF.ID)
		}
		for _, e := range entries {
			if got := e.Value.Flags&listenerSteeredFlag != 0; got != l.BPF.Steered || !got {
				t.Errorf("listener %s: steered flag %v in the map, %v in status; want both true", l.Key, got, l.BPF.Steered)
			}
			if int(e.Value.NMappings) != len(l.Mappings) || !slices.Equal(e.Value.MappingIDs[:e.Value.NMappings], wantIDs) {
				t.Errorf("listener %s: map has mapping set %v (n=%d), status %v", l.Key, e.Value.MappingIDs, e.Value.NMappings, wantIDs)
			}
		}
		if got := steeredByID[l.BPF.ID]; got != l.BPF.SteeredConnections || got != l.Accepted {
			t.Errorf("listener %s: listener_stats steered %d, status %d, accepted %d; want all equal",
				l.Key, got, l.BPF.SteeredConnections, l.Accepted)
		}
		for _, m := range l.Mappings {
			statusMappings++
			e, ok := mappingByID[m.BPF.ID]
			if !ok {
				t.Errorf("mapping %s: id %d not in the mappings map", m.Name, m.BPF.ID)
				continue
			}
			if e.Value.Name != m.Name || e.Value.Upstream != m.BPF.Upstream || e.Value.Weight != m.BPF.Weight ||
				e.Value.ListenerID != l.BPF.ID {
				t.Errorf("mapping %s: map has %+v, status %+v on listener %d", m.Name, e.Value, *m.BPF, l.BPF.ID)
			}
			if got := bytesByID[m.BPF.ID]; got != m.BPF.Bytes {
				t.Errorf("mapping %s: mapping_totals bytes %d, status %d", m.Name, got, m.BPF.Bytes)
			}
		}
	}
	if statusMappings != len(mappings) || statusMappings != 7 {
		t.Errorf("status shows %d mappings, the mappings map holds %d; want 7 each", statusMappings, len(mappings))
	}

	// The canary pair's kernel totals are the bytes the relay accounted to
	// its spliced connections, now that they have all ended.
	var pairBytes, relayBytes uint64
	for _, l := range s.Listeners {
		if l.Key != "*:7200" {
			continue
		}
		for _, m := range l.Mappings {
			pairBytes += m.BPF.Bytes
			relayBytes += m.KernelBytesToUpstream + m.KernelBytesToClient
		}
	}
	if pairBytes == 0 || pairBytes != relayBytes {
		t.Errorf("port 7200: mapping_totals %d bytes, status's spliced-connection totals %d; want equal and > 0", pairBytes, relayBytes)
	}

	// pairs holds one entry per direction of each live spliced connection.
	if len(pairs) != 2*s.Kernel.Pairs {
		t.Errorf("pairs map has %d entries, status shows %d spliced connections (want 2 each)", len(pairs), s.Kernel.Pairs)
	}
	for _, c := range held {
		c.Close()
	}
}

// TestKernelSteeringOff: with --sk-lookup off every listener binds its own
// socket, as without BPF; the tables are still synced for inspection and
// show no listener steered, and status says why.
func TestKernelSteeringOff(t *testing.T) {
	requireBpftool(t)
	tp := newTopology(t)
	k := newKernelDaemon(t)
	tp.serveEcho(t, "upstream", 22, false)
	cfg := configDir(t, []string{"docs/ssh.yaml"}, nil)
	tp.start(t, k.args([]string{cfg}, "--sk-lookup", "off")...)
	ctx := testContext(t, time.Minute)

	c, err := tp.connect(ctx, proxyAddr(2222))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatalf("greeting through a per-port socket: %v", err)
	}
	s := k.status(t)
	if s.BPF == nil || s.BPF.Steering != "per-port sockets" || s.BPF.SteeringReason == "" {
		t.Fatalf("status BPF = %+v, want per-port sockets with a reason", s.BPF)
	}
	var listeners []bpfListenerEntry
	bpftoolDump(t, k.pinDir, "listeners", &listeners)
	if len(listeners) != 2 {
		t.Fatalf("listeners map: %d entries, want 2 (the wildcard of each family)", len(listeners))
	}
	for _, e := range listeners {
		if e.Value.Flags&listenerSteeredFlag != 0 || e.Key.Port != 2222 || e.Value.NMappings != 1 {
			t.Errorf("listeners entry %+v: want port 2222, one mapping, not steered", e)
		}
	}
}
