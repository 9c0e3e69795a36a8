package resolve

import (
	"strings"
	"testing"
)

func TestParseService(t *testing.T) {
	tests := []struct {
		in      string
		want    service
		wantErr string
	}{
		{in: "upstream:22", want: service{host: "upstream", port: 22}},
		{in: "upstream", want: service{host: "upstream"}},
		{in: "http://upstream:8080", want: service{host: "upstream", port: 8080}},
		{in: "https://upstream", want: service{https: true, host: "upstream"}},
		{in: "HTTPS://upstream:9999", want: service{https: true, host: "upstream", port: 9999}},
		{in: "https://upstream/", want: service{https: true, host: "upstream"}},
		{in: "10.0.0.1:5432", want: service{host: "10.0.0.1", port: 5432}},
		{in: "[::1]:9000", want: service{host: "::1", port: 9000}},
		{in: "[fd00::5]", want: service{host: "fd00::5"}},
		{in: "https://[2001:db8::1]:8443", want: service{https: true, host: "2001:db8::1", port: 8443}},
		{in: "svc.ns", want: service{host: "svc.ns"}},
		{in: "", wantErr: "service is required"},
		{in: "tcp://upstream:22", wantErr: `unknown scheme "tcp"`},
		{in: "ftp://upstream", wantErr: `unknown scheme "ftp"`},
		{in: "http://upstream/path", wantErr: "URL parts"},
		{in: "upstream:22?x=1", wantErr: "URL parts"},
		{in: "user@upstream:22", wantErr: "URL parts"},
		{in: "https://upstream#frag", wantErr: "URL parts"},
		{in: "http://", wantErr: "no host"},
		{in: ":22", wantErr: "no host"},
		{in: "upstream:0", wantErr: "invalid port"},
		{in: "upstream:65536", wantErr: "invalid port"},
		{in: "upstream:ssh", wantErr: "invalid port"},
		{in: "upstream:", wantErr: "empty port"},
		{in: "::1", wantErr: "must be written in brackets"},
		{in: "fd00::1:80", wantErr: "must be written in brackets"},
		{in: "[::1", wantErr: "unterminated"},
		{in: "[::1]x", wantErr: "junk"},
		{in: "[10.0.0.1]:80", wantErr: "not an IPv6"},
		{in: "up stream", wantErr: "contains"},
		{in: "a..b", wantErr: "empty label"},
	}
	for _, tt := range tests {
		got, err := parseService(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseService(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseService(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestExpandHost(t *testing.T) {
	tests := []struct {
		host, domain, ns string
		want             string
	}{
		{"db", "cluster.local", "ambassador", "db.ambassador.svc.cluster.local"},
		{"db.data", "cluster.local", "ambassador", "db.data.svc.cluster.local"},
		{"db.data", "cluster.local.", "ambassador", "db.data.svc.cluster.local"},
		{"db.data.svc", "cluster.local", "ambassador", "db.data.svc"},
		{"db.example.com", "cluster.local", "ambassador", "db.example.com"},
		{"db.", "cluster.local", "ambassador", "db."},
		{"localhost", "cluster.local", "ambassador", "localhost"},
		{"10.0.0.1", "cluster.local", "ambassador", "10.0.0.1"},
		{"::1", "cluster.local", "ambassador", "::1"},
		{"db", "", "ambassador", "db"},
		{"db.data", "", "ambassador", "db.data"},
	}
	for _, tt := range tests {
		if got := expandHost(tt.host, tt.domain, tt.ns); got != tt.want {
			t.Errorf("expandHost(%q, %q, %q) = %q, want %q", tt.host, tt.domain, tt.ns, got, tt.want)
		}
	}
}

func TestNormalizeHost(t *testing.T) {
	tests := []struct{ in, want, wantErr string }{
		{in: "Example.COM.", want: "example.com"},
		{in: "*.example.com", want: "*.example.com"},
		{in: "*", want: "*"},
		{in: "foo.*", want: "foo.*"},
		{in: "a.*.com", wantErr: "one \"*\""},
		{in: "**.com", wantErr: "one \"*\""},
		{in: "bad host", wantErr: "contains"},
	}
	for _, tt := range tests {
		got, err := normalizeHost(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("normalizeHost(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("normalizeHost(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
