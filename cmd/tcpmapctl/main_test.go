package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	nobody := filepath.Join(t.TempDir(), "nobody.sock")
	tests := []struct {
		args []string
		want int
	}{
		{[]string{}, exitUsage},
		{[]string{"frobnicate", "--socket", nobody}, exitUsage},
		{[]string{"status", "-o", "xml"}, exitUsage},
		{[]string{"--no-such-flag", "status"}, exitUsage},
		{[]string{"status", "--socket", nobody, "--timeout", "2s"}, exitUnreachable},
		{[]string{"conns", "--socket", nobody, "--timeout", "2s"}, exitUnreachable},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		got, err := run(tt.args, strings.NewReader(""), &out)
		if got != tt.want {
			t.Errorf("tcpmapctl %v: exit %d (%v), want %d", tt.args, got, err, tt.want)
		}
		if err == nil {
			t.Errorf("tcpmapctl %v: no error message", tt.args)
		}
	}
}
