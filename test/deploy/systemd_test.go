package deploy

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/api"
)

// unit is a systemd unit file: section → key → values in file order.
type unit map[string]map[string][]string

// parseUnit reads a unit file, joining lines continued with a backslash.
func parseUnit(t *testing.T, data []byte) unit {
	t.Helper()
	u := unit{}
	section := ""
	var logical string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasSuffix(line, "\\") {
			logical += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, logical = strings.TrimSpace(logical+line), ""
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("unit line %q: want key=value inside a section", line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// one is the single value of a [Service] key.
func (u unit) one(t *testing.T, key string) string {
	t.Helper()
	v := u["Service"][key]
	if len(v) != 1 {
		t.Errorf("[Service] %s: %d values %q, want exactly one", key, len(v), v)
		return ""
	}
	return v[0]
}

func TestSystemdUnit(t *testing.T) {
	path := filepath.Join(repoRoot(t), "deploy", "systemd", "tcpmapd.service")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, data)

	argv := strings.Fields(u.one(t, "ExecStart"))
	if len(argv) == 0 || filepath.Base(argv[0]) != "tcpmapd" {
		t.Fatalf("ExecStart %q does not run tcpmapd", argv)
	}
	o, err := parseDaemonArgs(argv[1:])
	if err != nil {
		t.Fatalf("ExecStart's flags do not parse as tcpmapd's: %v", err)
	}

	// The directories systemd creates are the ones the flags name.
	if want := []string{"/etc/" + u.one(t, "ConfigurationDirectory")}; !slices.Equal(o.ConfigPaths, want) {
		t.Errorf("--config %q, want %q (ConfigurationDirectory)", o.ConfigPaths, want)
	}
	if want := "/var/lib/" + u.one(t, "StateDirectory"); o.StateDir != want {
		t.Errorf("--state-dir %q, want %q (StateDirectory)", o.StateDir, want)
	}
	if want := "/run/" + u.one(t, "RuntimeDirectory"); filepath.Dir(o.AdminSocket) != want {
		t.Errorf("--admin-socket %q is not in %q (RuntimeDirectory)", o.AdminSocket, want)
	}
	if o.AdminSocket != api.DefaultSocket {
		t.Errorf("--admin-socket %q: tcpmapctl's default is %s", o.AdminSocket, api.DefaultSocket)
	}
	rw := strings.Fields(strings.Join(u["Service"]["ReadWritePaths"], " "))
	if !slices.ContainsFunc(rw, func(d string) bool { return underDir(o.BPFFS, d) }) {
		t.Errorf("--bpffs %s is outside ReadWritePaths %q: ProtectSystem=strict makes it read-only", o.BPFFS, rw)
	}

	if got := u.one(t, "ExecReload"); !slices.Equal(strings.Fields(got), []string{"/bin/kill", "-HUP", "$MAINPID"}) {
		t.Errorf("ExecReload %q, want /bin/kill -HUP $MAINPID (tcpmapd reloads on SIGHUP)", got)
	}
	stop, err := time.ParseDuration(u.one(t, "TimeoutStopSec") + "s")
	if err != nil || stop <= o.DrainTimeout {
		t.Errorf("TimeoutStopSec %q, want more than --drain-timeout %v", u.one(t, "TimeoutStopSec"), o.DrainTimeout)
	}

	// The capabilities are exactly the DaemonSet's, as systemd names them.
	var want []string
	for _, c := range wantCaps {
		want = append(want, "CAP_"+c)
	}
	want = sortedCopy(want)
	for _, key := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
		if got := sortedCopy(strings.Fields(u.one(t, key))); !slices.Equal(got, want) {
			t.Errorf("%s %v, want %v (the DaemonSet's)", key, got, want)
		}
	}

	for key, want := range map[string]string{
		"Restart":         "on-failure",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
	} {
		if got := u.one(t, key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	families := strings.Fields(u.one(t, "RestrictAddressFamilies"))
	if got, want := sortedCopy(families), []string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}; !slices.Equal(got, want) {
		t.Errorf("RestrictAddressFamilies %v, want %v", got, want)
	}
	if filter := strings.Fields(u.one(t, "SystemCallFilter")); !slices.Contains(filter, "bpf") {
		t.Errorf("SystemCallFilter %v lacks bpf: the kernel splice could not load", filter)
	}

	verifyUnit(t, data, argv[0])
}

// verifyUnit runs systemd-analyze verify on the unit, with ExecStart's
// binary pointed at an executable that exists here (verify insists on it),
// and wants no complaint at all: verify exits 0 even for an unknown key,
// which it only prints.
func verifyUnit(t *testing.T, data []byte, binary string) {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: the unit's syntax is not verified")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	unitPath := filepath.Join(dir, "tcpmapd.service")
	if err := os.WriteFile(unitPath, bytes.ReplaceAll(data, []byte(binary), []byte(self)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, analyze, "verify", "--man=no", unitPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
