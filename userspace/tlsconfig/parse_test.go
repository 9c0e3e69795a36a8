package tlsconfig

import (
	"crypto/tls"
	"reflect"
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    uint16
		wantErr bool
	}{
		{"", 0, false},
		{"v1.0", tls.VersionTLS10, false},
		{"v1.1", tls.VersionTLS11, false},
		{"v1.2", tls.VersionTLS12, false},
		{"v1.3", tls.VersionTLS13, false},
		{"V1.3", tls.VersionTLS13, false},
		{"1.2", tls.VersionTLS12, false},
		{"v1.4", 0, true},
		{"TLSv1_2", 0, true},
		{"v2", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), tt.in) {
			t.Errorf("ParseVersion(%q) error %q does not name the input", tt.in, err)
		}
	}
	if got := VersionName(tls.VersionTLS12); got != "v1.2" {
		t.Errorf("VersionName(1.2) = %q", got)
	}
}

func TestParseCipherSuites(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []uint16
		wantErr string
	}{
		{name: "none", in: nil, want: nil},
		{
			name: "openssl names",
			in:   []string{"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"},
			want: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256},
		},
		{
			name: "equal preference group",
			in:   []string{"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]", "ECDHE-RSA-AES256-GCM-SHA384"},
			want: []uint16{
				tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
				tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
				tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			},
		},
		{
			name: "go names",
			in:   []string{"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "tls_ecdhe_ecdsa_with_aes_256_cbc_sha"},
			want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA},
		},
		{
			name: "tls 1.3 names ignored",
			in:   []string{"TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-SHA", "TLS_CHACHA20_POLY1305_SHA256"},
			want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA},
		},
		{
			name: "duplicates dropped",
			in:   []string{"ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"},
			want: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
		},
		{
			name: "envoy default rsa kex accepted",
			in:   []string{"AES128-GCM-SHA256", "AES256-SHA"},
			want: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_CBC_SHA},
		},
		{name: "unknown", in: []string{"ECDHE-RSA-AES128-GCM-SHA256", "BOGUS-SUITE"}, wantErr: `"BOGUS-SUITE"`},
		{name: "unknown in group", in: []string{"[ECDHE-RSA-AES128-GCM-SHA256|NOPE]"}, wantErr: `"NOPE"`},
		{name: "rc4", in: []string{"RC4-SHA"}, wantErr: `"RC4-SHA" uses RC4`},
		{name: "rc4 go name", in: []string{"TLS_RSA_WITH_RC4_128_SHA"}, wantErr: "RC4"},
		{name: "not implemented by go", in: []string{"PSK-AES128-CBC-SHA"}, wantErr: `"PSK-AES128-CBC-SHA"`},
		{name: "malformed group", in: []string{"[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-AES256-GCM-SHA384"}, wantErr: "malformed"},
		{name: "empty", in: []string{""}, wantErr: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCipherSuites(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseCipherSuites(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCipherSuites(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseCipherSuites(%q) = %x, want %x", tt.in, got, tt.want)
			}
		})
	}
}

func TestInsecureSuites(t *testing.T) {
	ids, err := ParseCipherSuites([]string{"ECDHE-RSA-AES128-GCM-SHA256", "AES128-SHA", "DES-CBC3-SHA"})
	if err != nil {
		t.Fatal(err)
	}
	got := InsecureSuites(ids)
	want := []string{"TLS_RSA_WITH_AES_128_CBC_SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("InsecureSuites = %q, want %q", got, want)
	}
}

func TestParseCurves(t *testing.T) {
	tests := []struct {
		in      []string
		want    []tls.CurveID
		wantErr string
	}{
		{in: nil, want: nil},
		{in: []string{"X25519", "P-256", "P-384", "P-521"}, want: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}},
		{in: []string{"prime256v1", "secp256r1"}, want: []tls.CurveID{tls.CurveP256}},
		{in: []string{"secp384r1", "secp521r1"}, want: []tls.CurveID{tls.CurveP384, tls.CurveP521}},
		{in: []string{"X25519MLKEM768", "x25519"}, want: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}},
		{in: []string{"X448"}, wantErr: `"X448"`},
		{in: []string{"P-256", ""}, wantErr: `""`},
	}
	for _, tt := range tests {
		got, err := ParseCurves(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseCurves(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseCurves(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseALPN(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"h2", []string{"h2"}},
		{"h2,http/1.1", []string{"h2", "http/1.1"}},
		{" h2 , , http/1.1 ,", []string{"h2", "http/1.1"}},
		{" , ", nil},
	}
	for _, tt := range tests {
		if got := ParseALPN(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseALPN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
