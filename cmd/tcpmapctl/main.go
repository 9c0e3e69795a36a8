// Command tcpmapctl inspects and operates a running tcpmapd through its
// admin socket.
//
//	tcpmapctl add NAME --port P --service S [--host H] ...
//	tcpmapctl apply -f FILE|-
//	tcpmapctl remove NAME
//	tcpmapctl list [-o table|yaml|json]
//	tcpmapctl get NAME [-o yaml|json]
//	tcpmapctl status
//	tcpmapctl conns [--mapping NAME]
//	tcpmapctl check -f FILE        (offline, no daemon)
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
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/ctl"
	"github.com/tcpmap/tcpmap/userspace/resolve"
)

const usage = `tcpmapctl: operate a running tcpmapd

Usage:
  tcpmapctl add NAME --port P --service S [--host H] [--address A] [--tls CTX]
                [--weight W] [--idle-timeout-ms N] [--namespace NS]
                                                  add or replace a TCPMapping
  tcpmapctl apply -f FILE|-                       apply objects (YAML/JSON, as config files)
  tcpmapctl remove NAME [--namespace NS] [--kind KIND]
                                                  remove an object applied with tcpmapctl
  tcpmapctl list [-o table|yaml|json]             every object and its source
  tcpmapctl get NAME [--namespace NS] [--kind KIND] [-o yaml|json]
  tcpmapctl status [-o table|json]                datapath, BPF objects, listeners, per-mapping counters
  tcpmapctl conns [--mapping NAME] [-o table|json]   live connections, their datapath and why
  tcpmapctl check -f FILE|DIR|-                   validate offline, no daemon needed; exit 1 on errors

NAME may be namespace/name.

Flags:
`

// Exit codes.
const (
	exitOK          = 0
	exitRejected    = 1
	exitUsage       = 2
	exitUnreachable = 3
)

// commands lists each command's own flags (beyond --socket and --timeout)
// and output formats, the first being the default.
var commands = map[string]struct {
	flags   []string
	outputs []string
}{
	"add":    {flags: []string{"port", "service", "host", "address", "tls", "weight", "idle-timeout-ms", "namespace"}},
	"apply":  {flags: []string{"filename"}},
	"remove": {flags: []string{"namespace", "kind"}},
	"list":   {flags: []string{"output"}, outputs: []string{"table", "yaml", "json"}},
	"get":    {flags: []string{"output", "namespace", "kind"}, outputs: []string{"yaml", "json"}},
	"status": {flags: []string{"output"}, outputs: []string{"table", "json"}},
	"conns":  {flags: []string{"output", "mapping"}, outputs: []string{"table", "json"}},
	"check":  {flags: []string{"filename", "ambassador-id"}},
}

func main() {
	code, err := run(os.Args[1:], os.Stdin, os.Stdout)
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tcpmapctl:", oneLine(err.Error()))
	}
	os.Exit(code)
}

// oneLine keeps the message on the one line the exit code goes with.
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }

type flags struct {
	socket, output, mapping, namespace, kind, file, ambassadorID string
	timeout                                                      time.Duration
	port, weight, idleTimeoutMs                                  int
	service, host, address, tls                                  string
}

func run(args []string, in io.Reader, out io.Writer) (int, error) {
	fs := pflag.NewFlagSet("tcpmapctl", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.SetOutput(os.Stderr); fs.PrintDefaults() }
	var f flags
	fs.StringVar(&f.socket, "socket", api.DefaultSocket, "tcpmapd's admin socket")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "how long to wait for the daemon")
	fs.StringVarP(&f.output, "output", "o", "", "output format (see each command)")
	fs.StringVar(&f.mapping, "mapping", "", "conns: only this mapping (namespace/name or name)")
	fs.StringVarP(&f.namespace, "namespace", "n", "", "the object's namespace (default \"default\")")
	fs.StringVar(&f.kind, "kind", config.KindTCPMapping, "get, remove: the object's kind")
	fs.StringVarP(&f.file, "filename", "f", "", "apply, check: file to read, or - for standard input")
	fs.StringVar(&f.ambassadorID, "ambassador-id", "default", "check: the node's ambassador_id")
	fs.IntVar(&f.port, "port", 0, "add: port to listen on (required)")
	fs.StringVar(&f.service, "service", "", "add: upstream, [scheme://]host[:port] (required)")
	fs.StringVar(&f.host, "host", "", "add: SNI host name; terminates TLS")
	fs.StringVar(&f.address, "address", "", "add: address to listen on (default all)")
	fs.StringVar(&f.tls, "tls", "", "add: TLSContext used to originate TLS to the upstream")
	fs.IntVar(&f.weight, "weight", 0, "add: canary weight 0..100")
	fs.IntVar(&f.idleTimeoutMs, "idle-timeout-ms", 0, "add: close connections idle this long")
	if err := fs.Parse(args); err != nil {
		return exitUsage, err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage, fmt.Errorf("want a command: add, apply, remove, list, get, status, conns or check")
	}
	cmd := fs.Arg(0)
	spec, ok := commands[cmd]
	if !ok {
		return exitUsage, fmt.Errorf("unknown command %q: want add, apply, remove, list, get, status, conns or check", cmd)
	}
	var misplaced error
	fs.Visit(func(fl *pflag.Flag) {
		if fl.Name == "socket" || fl.Name == "timeout" || misplaced != nil {
			return
		}
		for _, ok := range spec.flags {
			if ok == fl.Name {
				return
			}
		}
		misplaced = fmt.Errorf("--%s is not a flag of %s", fl.Name, cmd)
	})
	if misplaced != nil {
		return exitUsage, misplaced
	}
	if len(spec.outputs) > 0 {
		if f.output == "" {
			f.output = spec.outputs[0]
		}
		if !contains(spec.outputs, f.output) {
			return exitUsage, fmt.Errorf("-o %q: want %s", f.output, strings.Join(spec.outputs, ", "))
		}
	}
	pos := fs.Args()[1:]
	wantArgs := map[string]int{"add": 1, "remove": 1, "get": 1}[cmd]
	if len(pos) != wantArgs {
		return exitUsage, fmt.Errorf("%s takes %d argument(s), got %d", cmd, wantArgs, len(pos))
	}
	if cmd == "check" {
		return check(f, in, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	c := api.NewClient(f.socket)
	var err error
	switch cmd {
	case "add":
		return add(ctx, c, fs, f, pos[0], out)
	case "apply":
		return apply(ctx, c, f, in, out)
	case "remove":
		ns, name := splitName(pos[0], f.namespace)
		var res api.DeleteResult
		if res, err = c.Delete(ctx, f.kind, ns, name); err == nil {
			fmt.Fprintf(out, "%s %s/%s removed\n", res.Kind, res.Namespace, res.Name)
			if res.Shadowed != "" {
				fmt.Fprintf(out, "the object of the same name from %s stays in service\n", res.Shadowed)
			}
		}
	case "list":
		var objs []api.Object
		if objs, err = c.List(ctx); err == nil {
			err = writeAs(out, f.output, objs, func() error { return ctl.WriteObjects(out, objs) },
				func() error { return ctl.WriteObjectsYAML(out, objs) })
		}
	case "get":
		ns, name := splitName(pos[0], f.namespace)
		var o api.Object
		if o, err = c.Get(ctx, f.kind, ns, name); err == nil {
			err = writeAs(out, f.output, o, nil, func() error { return ctl.WriteObjectYAML(out, o) })
		}
	case "status":
		var s api.Status
		if s, err = c.Status(ctx); err == nil {
			err = writeAs(out, f.output, s, func() error { return ctl.WriteStatus(out, s) }, nil)
		}
	case "conns":
		var conns []api.Conn
		if conns, err = c.Conns(ctx, f.mapping); err == nil {
			err = writeAs(out, f.output, conns, func() error { return ctl.WriteConns(out, conns) }, nil)
		}
	}
	if err != nil {
		return exitCode(err), err
	}
	return exitOK, nil
}

func writeAs(out io.Writer, format string, v any, table, yaml func() error) error {
	switch format {
	case "table":
		return table()
	case "yaml":
		return yaml()
	}
	return ctl.WriteJSON(out, v)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// splitName reads NAME or NAMESPACE/NAME; --namespace applies to a bare
// name.
func splitName(arg, namespace string) (ns, name string) {
	if before, after, ok := strings.Cut(arg, "/"); ok {
		return before, after
	}
	if namespace == "" {
		namespace = config.DefaultNamespace
	}
	return namespace, arg
}

func add(ctx context.Context, c *api.Client, fs *pflag.FlagSet, f flags, arg string, out io.Writer) (int, error) {
	if !fs.Changed("port") || f.service == "" {
		return exitUsage, fmt.Errorf("add needs --port and --service")
	}
	ns, name := splitName(arg, f.namespace)
	spec := map[string]any{"port": f.port, "service": f.service}
	for k, v := range map[string]string{"host": f.host, "address": f.address, "tls": f.tls} {
		if v != "" {
			spec[k] = v
		}
	}
	if fs.Changed("weight") {
		spec["weight"] = f.weight
	}
	if fs.Changed("idle-timeout-ms") {
		spec["idle_timeout_ms"] = f.idleTimeoutMs
	}
	doc := map[string]any{
		"apiVersion": config.APIVersionV3Alpha1,
		"kind":       config.KindTCPMapping,
		"metadata":   map[string]any{"name": name, "namespace": ns},
		"spec":       spec,
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return exitRejected, err
	}
	return sendApply(ctx, c, "tcpmapctl add", body, out)
}

func apply(ctx context.Context, c *api.Client, f flags, in io.Reader, out io.Writer) (int, error) {
	if f.file == "" {
		return exitUsage, fmt.Errorf("apply needs -f FILE or -f -")
	}
	body, name, err := readInput(f.file, in)
	if err != nil {
		return exitRejected, err
	}
	return sendApply(ctx, c, name, body, out)
}

func readInput(file string, in io.Reader) (data []byte, name string, err error) {
	if file == "-" {
		data, err = io.ReadAll(in)
		return data, "stdin", err
	}
	data, err = os.ReadFile(file)
	return data, file, err
}

func sendApply(ctx context.Context, c *api.Client, name string, body []byte, out io.Writer) (int, error) {
	res, err := c.Apply(ctx, name, body)
	if err != nil {
		var se *api.StatusError
		if errors.As(err, &se) && len(se.Problems) > 0 {
			ctl.WriteProblems(out, se.Problems)
			return exitRejected, fmt.Errorf("rejected with %d problem(s); nothing applied", len(se.Problems))
		}
		return exitCode(err), err
	}
	ctl.WriteApplyResult(out, res)
	return exitOK, nil
}

// check validates offline, as the daemon would: config files, then the
// resolution of what loaded.
func check(f flags, in io.Reader, out io.Writer) (int, error) {
	if f.file == "" {
		return exitUsage, fmt.Errorf("check needs -f FILE, -f DIR or -f -")
	}
	var rs []config.Resource
	var problems []config.Problem
	if f.file == "-" {
		data, err := io.ReadAll(in)
		if err != nil {
			return exitRejected, err
		}
		rs, problems = config.LoadBytes("stdin", data, config.Origin{Source: "file"})
	} else {
		rs, problems = config.Load([]string{f.file})
	}
	snap, more := resolve.Resolve(rs, resolve.Options{AmbassadorID: f.ambassadorID})
	problems = append(problems, more...)
	var aps []api.Problem
	errs := 0
	for _, p := range problems {
		aps = append(aps, api.ProblemOf(p))
		if !p.IsWarning() {
			errs++
		}
	}
	sort.SliceStable(aps, func(i, j int) bool { return aps[i].Level < aps[j].Level }) // errors first
	ctl.WriteProblems(out, aps)
	fmt.Fprintf(out, "%d object(s), %d listener(s), %d error(s), %d warning(s)\n", len(rs), len(snap.Listeners), errs, len(problems)-errs)
	if errs > 0 {
		return exitRejected, fmt.Errorf("%s: %d error(s)", f.file, errs)
	}
	return exitOK, nil
}

func exitCode(err error) int {
	if errors.Is(err, api.ErrUnreachable) {
		return exitUnreachable
	}
	return exitRejected
}
