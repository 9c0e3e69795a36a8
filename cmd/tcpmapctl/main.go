// Command tcpmapctl inspects and operates a running tcpmapd through its
// admin socket.
//
//	tcpmapctl status
//	tcpmapctl conns [--mapping NAME]
//
// Exit codes: 0 ok, 1 rejected or not found, 2 usage, 3 daemon unreachable.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/ctl"
)

const usage = `tcpmapctl: operate a running tcpmapd

Usage:
  tcpmapctl status [-o table|json]              datapath, BPF objects, listeners, per-mapping counters
  tcpmapctl conns [--mapping NAME] [-o table|json]   live connections, their datapath and why

Flags:
`

// Exit codes.
const (
	exitOK          = 0
	exitRejected    = 1
	exitUsage       = 2
	exitUnreachable = 3
)

func main() {
	code, err := run(os.Args[1:], os.Stdout)
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tcpmapctl:", err)
	}
	os.Exit(code)
}

func run(args []string, out io.Writer) (int, error) {
	fs := pflag.NewFlagSet("tcpmapctl", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	socket := fs.String("socket", api.DefaultSocket, "tcpmapd's admin socket")
	output := fs.StringP("output", "o", "table", "table or json")
	mapping := fs.String("mapping", "", "conns: only this mapping (namespace/name or name)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the daemon")
	if err := fs.Parse(args); err != nil {
		return exitUsage, err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage, fmt.Errorf("want one command: status or conns")
	}
	if *output != "table" && *output != "json" {
		return exitUsage, fmt.Errorf("-o %q: want table or json", *output)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := api.NewClient(*socket)

	var (
		v     any
		table func() error
		err   error
	)
	switch fs.Arg(0) {
	case "status":
		var s api.Status
		s, err = c.Status(ctx)
		v, table = s, func() error { return ctl.WriteStatus(out, s) }
	case "conns":
		var conns []api.Conn
		conns, err = c.Conns(ctx, *mapping)
		v, table = conns, func() error { return ctl.WriteConns(out, conns) }
	default:
		return exitUsage, fmt.Errorf("unknown command %q: want status or conns", fs.Arg(0))
	}
	if err != nil {
		return exitCode(err), err
	}
	if *output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return exitOK, enc.Encode(v)
	}
	return exitOK, table()
}

func exitCode(err error) int {
	if errors.Is(err, api.ErrUnreachable) {
		return exitUnreachable
	}
	return exitRejected
}
