// Command tcpmapd is the tcpmap node proxy: it serves Emissary TCPMappings.
//
//	tcpmapd --config /etc/tcpmap            serve
//	tcpmapd check --config /etc/tcpmap      validate, print the listener table
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/tcpmap/tcpmap/datapath"
	"github.com/tcpmap/tcpmap/userspace/daemon"
	"github.com/tcpmap/tcpmap/userspace/logging"
)

const usage = `tcpmapd: layer-4 TCP node proxy for Emissary TCPMappings

Usage:
  tcpmapd [flags]            serve the configuration
  tcpmapd check [flags]      validate the configuration, print the listener
                             table and every problem; exit 1 on errors
  tcpmapd mount-bpffs DIR    mount a bpffs on DIR unless one is there (needs
                             CAP_SYS_ADMIN; for init containers and
                             ExecStartPre, so the daemon can run without it)

Flags:
`

// errUsage marks errors that deserve exit code 2.
var errUsage = errors.New("usage")

func main() {
	code, err := run(os.Args[1:])
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tcpmapd:", err)
	}
	os.Exit(code)
}

func run(args []string) (int, error) {
	if len(args) > 0 && args[0] == "mount-bpffs" {
		return mountBPFFS(args[1:])
	}
	check := len(args) > 0 && args[0] == "check"
	if check {
		args = args[1:]
	}

	fs := pflag.NewFlagSet("tcpmapd", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	var opts daemon.Options
	var logLevel, logFormat string
	opts.AddFlags(fs)
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "json", "json or console")
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	if fs.NArg() > 0 {
		return 2, fmt.Errorf("unexpected argument %q (see --help): %w", fs.Arg(0), errUsage)
	}
	if err := opts.Validate(); err != nil {
		return 2, fmt.Errorf("%w: %w", err, errUsage)
	}

	if check {
		if daemon.Check(os.Stdout, opts) > 0 {
			return 1, nil
		}
		return 0, nil
	}

	log, err := logging.New(logLevel, logFormat)
	if err != nil {
		return 2, err
	}
	defer func() { _ = log.Sync() }()
	opts.Logger = log

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, opts); err != nil {
		return 1, err
	}
	return 0, nil
}

func mountBPFFS(args []string) (int, error) {
	if len(args) != 1 {
		return 2, fmt.Errorf("mount-bpffs DIR: want one directory: %w", errUsage)
	}
	mounted, err := datapath.MountBPFFS(args[0])
	if err != nil {
		return 1, err
	}
	if mounted {
		fmt.Printf("mounted a bpffs on %s\n", args[0])
	} else {
		fmt.Printf("%s is a bpffs already\n", args[0])
	}
	return 0, nil
}
