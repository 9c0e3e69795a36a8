package daemon

import (
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestSizeFlags(t *testing.T) {
	for _, tt := range []struct {
		args        []string
		after       int
		bound       int
		errContains string
	}{
		{args: nil, after: DefaultSpliceAfterBytes, bound: 0},
		{args: []string{"--splice-after-bytes", "64KiB"}, after: 64 << 10},
		{args: []string{"--splice-after-bytes", "64KiB", "--splice-bound", "4MiB"}, after: 64 << 10, bound: 4 << 20},
		{args: []string{"--splice-after-bytes", "0"}, after: 0},
		{args: []string{"--splice-after-bytes", "1048576"}, after: 1 << 20},
		{args: []string{"--splice-bound", "0"}, errContains: "positive size"},
		{args: []string{"--splice-after-bytes", "0", "--splice-after-bytes", "2KiB"}, after: 2 << 10},
		{args: []string{"--splice-after-bytes", "-1"}, errContains: "positive size"},
		{args: []string{"--splice-after-bytes", "lots"}, errContains: "positive size"},
	} {
		var o Options
		fs := pflag.NewFlagSet("tcpmapd", pflag.ContinueOnError)
		o.AddFlags(fs)
		err := fs.Parse(tt.args)
		switch {
		case tt.errContains != "":
			if err == nil || !strings.Contains(err.Error(), tt.errContains) {
				t.Errorf("%v: error %v, want one containing %q", tt.args, err, tt.errContains)
			}
		case err != nil:
			t.Errorf("%v: %v", tt.args, err)
		case o.SpliceAfterBytes != tt.after || o.SpliceBound != tt.bound:
			t.Errorf("%v: splice-after %d, splice-bound %d; want %d, %d", tt.args, o.SpliceAfterBytes, o.SpliceBound, tt.after, tt.bound)
		}
	}
}

// Every flag the daemon accepts is in README's flag table, so the table
// cannot fall behind the daemon.
func TestREADMEDocumentsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var o Options
	fs := pflag.NewFlagSet("tcpmapd", pflag.ContinueOnError)
	o.AddFlags(fs)
	fs.VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(string(readme), "| `--"+f.Name) && !strings.Contains(string(readme), "`--"+f.Name+"`, ") {
			t.Errorf("flag --%s (%s) is not in README.md's flag table", f.Name, f.Usage)
		}
	})
}
