// Package ctl renders what tcpmapctl prints: tables for people, JSON or
// YAML-free JSON for scripts. It knows the API's types, not the daemon.
package ctl

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tcpmap/tcpmap/userspace/api"
)

// WriteStatus prints the daemon's status as text.
func WriteStatus(w io.Writer, s api.Status) error {
	fmt.Fprintf(w, "Datapath:  %s (%s)\n", s.Datapath, s.DatapathReason)
	if s.BPF != nil {
		fmt.Fprintf(w, "BPF:       pinned at %s, attached by %s\n", s.BPF.PinDir, s.BPF.AttachMode)
		fmt.Fprintf(w, "           maps: %s\n", strings.Join(s.BPF.Maps, ", "))
		fmt.Fprintf(w, "           programs: %s\n", strings.Join(s.BPF.Programs, ", "))
		steering := s.BPF.Steering
		if s.BPF.SteeringReason != "" {
			steering += " (" + s.BPF.SteeringReason + ")"
		}
		fmt.Fprintf(w, "Steering:  %s\n", steering)
	}
	if s.Kernel != nil {
		fmt.Fprintf(w, "Spliced:   %d connection(s) in the kernel\n", s.Kernel.Pairs)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tPROTO\tMAPPING\tACTIVE\tTOTAL\tSPLICED\tBYTES-UP\tBYTES-DOWN\tREFUSED")
	for _, l := range s.Listeners {
		proto := l.Protocol
		if l.Proxy {
			proto += "+PROXY"
		}
		if len(l.Mappings) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t%d\t%d\t-\t-\t-\t%s\n", l.Key, proto, l.Active, l.Accepted, reasons(l.Refusals))
		}
		for _, m := range l.Mappings {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", l.Key, proto, m.Name, m.Active, m.Total, m.Spliced,
				iec(m.BytesToUpstream+m.KernelBytesToUpstream), iec(m.BytesToClient+m.KernelBytesToClient),
				reasons(m.Refusals))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if s.BPF != nil {
		if err := writeTables(w, s); err != nil {
			return err
		}
	}
	if len(s.Resources) > 0 {
		if err := writeResources(w, s.Resources); err != nil {
			return err
		}
	}
	if len(s.Problems) > 0 {
		fmt.Fprintf(w, "\nProblems:\n")
		for _, p := range s.Problems {
			fmt.Fprintf(w, "  %s: %s\n", p.Level, p.Message)
		}
	}
	return nil
}

// writeResources prints the outcome of every resource, one line each; the
// reasons are in the Problems that follow.
func writeResources(w io.Writer, rs []api.Resource) error {
	fmt.Fprintln(w, "\nResources:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  KIND\tNAMESPACE\tNAME\tSOURCE\tOUTCOME")
	for _, r := range rs {
		outcome := r.Outcome
		switch {
		case len(r.Errors) > 0 && r.Outcome == "rejected":
			outcome += fmt.Sprintf(" (%d error(s))", len(r.Errors))
		case len(r.Warnings) > 0:
			outcome += fmt.Sprintf(" (%d warning(s))", len(r.Warnings))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", r.Kind, r.Namespace, r.Name, r.Source, outcome)
	}
	return tw.Flush()
}

// writeTables prints the pinned listener tables as bpftool would show
// them, one row per listener and per mapping, with the names tcpmapctl
// uses.
func writeTables(w io.Writer, s api.Status) error {
	fmt.Fprintf(w, "\nBPF tables (bpftool map dump pinned %s/{listeners,mappings,listener_stats,mapping_totals}):\n", s.BPF.PinDir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tID\tENDPOINTS\tSTEERED\tCONNS-STEERED")
	for _, l := range s.Listeners {
		if l.BPF == nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\n", l.Key)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%t\t%d\n", l.Key, l.BPF.ID, strings.Join(l.BPF.Endpoints, ","), l.BPF.Steered,
			l.BPF.SteeredConnections)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "MAPPING\tID\tLISTENER-ID\tWEIGHT\tUPSTREAM\tFLAGS\tKERNEL-BYTES")
	for _, l := range s.Listeners {
		for _, m := range l.Mappings {
			if m.BPF == nil {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\n", m.Name)
				continue
			}
			flags := strings.Join(m.BPF.Flags, ",")
			if flags == "" {
				flags = "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\n", m.Name, m.BPF.ID, m.BPF.ListenerID, m.BPF.Weight,
				m.BPF.Upstream, flags, iec(m.BPF.Bytes))
		}
	}
	return tw.Flush()
}

// WriteConns prints live connections as a table, oldest first.
func WriteConns(w io.Writer, conns []api.Conn) error {
	sort.SliceStable(conns, func(i, j int) bool { return conns[i].Age > conns[j].Age })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tCLIENT\tMAPPING\tDATAPATH\tAGE\tBYTES-UP\tBYTES-DOWN\tWHY")
	for _, c := range conns {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Listener, c.Client, c.Mapping, datapath(c),
			c.Age.Round(time.Second), iec(uint64(max(c.BytesToUpstream, 0))), iec(uint64(max(c.BytesToClient, 0))), why(c))
	}
	return tw.Flush()
}

// datapath is the connection's datapath, with the kernel's per-direction
// mechanism when the two differ.
func datapath(c api.Conn) string {
	k := c.Kernel
	if k == nil {
		return c.Datapath
	}
	if k.ToUpstream.Mechanism == k.ToClient.Mechanism {
		return c.Datapath + "/" + k.ToUpstream.Mechanism
	}
	return fmt.Sprintf("%s/up:%s,down:%s", c.Datapath, k.ToUpstream.Mechanism, k.ToClient.Mechanism)
}

func why(c api.Conn) string {
	parts := []string{c.Why}
	if k := c.Kernel; k != nil {
		for _, d := range []struct {
			name string
			dir  api.Direction
		}{{"up", k.ToUpstream}, {"down", k.ToClient}} {
			if d.dir.Why != "" {
				parts = append(parts, d.name+": "+d.dir.Why)
			}
		}
	}
	return strings.Join(parts, "; ")
}

func reasons(m map[string]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if v > 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return "-"
	}
	sort.Strings(keys)
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(out, ",")
}

// iec prints a byte count in IEC units.
func iec(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
