package coretest_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/coretest"
)

// The page's configuration is there to be read, with the placeholders
// Mosquitto fills in, even on a machine without Mosquitto.
func TestMosquittoDocumentedFiles(t *testing.T) {
	files, err := coretest.DocumentedFiles(coretest.MosquittoDocPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[coretest.MosquittoConf] == "" || files[coretest.MosquittoACL] == "" {
		t.Fatalf("%s: want the blocks file=%s and file=%s, got %d blocks", coretest.MosquittoDoc, coretest.MosquittoConf, coretest.MosquittoACL, len(files))
	}
	vals := map[string]string{"PORT": "8883", "ADDRESS": "0.0.0.0", "DIR": "/etc/mosquitto/prov", "CORE": "core"}
	if err := coretest.SamePlaceholders(files[coretest.MosquittoConf]+files[coretest.MosquittoACL], vals); err != nil {
		t.Fatal(err)
	}
	conf, err := coretest.FillPlaceholders(files[coretest.MosquittoConf], vals)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"listener 8883 0.0.0.0", "require_certificate true", "use_identity_as_username true", "use_username_as_clientid true", "allow_anonymous false"} {
		if !strings.Contains(conf, "\n"+line+"\n") {
			t.Errorf("%s: no line %q in:\n%s", coretest.MosquittoConf, line, conf)
		}
	}
}

func TestDocumentedFiles(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      map[string]string
		bad       bool
	}{
		{"two files", "text\n```conf file=a\nx ${A}\n```\n```sh\nnot a file\n```\n```ini file=b\ny\n\nz\n```\n",
			map[string]string{"a": "x ${A}\n", "b": "y\n\nz\n"}, false},
		{"none", "```sh\nls\n```\n", map[string]string{}, false},
		{"twice", "```conf file=a\nx\n```\n```conf file=a\ny\n```\n", nil, true},
		{"open", "```conf file=a\nx\n", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "doc.md")
			if err := os.WriteFile(path, []byte(tc.doc), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := coretest.DocumentedFiles(path)
			if tc.bad {
				if err == nil {
					t.Fatalf("no error; got %q", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s: got %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestPlaceholders(t *testing.T) {
	vals := map[string]string{"A": "1", "B": "two"}
	if got, err := coretest.FillPlaceholders("x ${A} ${B} ${A}", vals); err != nil || got != "x 1 two 1" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := coretest.FillPlaceholders("x ${C}", vals); !errors.Is(err, coretest.ErrPlaceholder) {
		t.Fatalf("a placeholder without a value: %v", err)
	}
	if err := coretest.SamePlaceholders("${A} ${B}", vals); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"${A}", "${A} ${B} ${C}", " \n"} {
		if err := coretest.SamePlaceholders(s, vals); !errors.Is(err, coretest.ErrPlaceholder) {
			t.Errorf("%q: %v", s, err)
		}
	}
}

// The HAProxy page's configuration is there to be read, with the
// placeholders coretest.HAProxy fills in, even on a machine without
// HAProxy: TCP mode, checks of /readyz over verified TLS with HAProxy's
// own certificate.
func TestHAProxyDocumentedFile(t *testing.T) {
	files, err := coretest.DocumentedFiles(coretest.HAProxyDocPath())
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{"LISTEN": ":8443", "CORE_HOST": "core.fleet.example.com", "ROOT": "/r.crt", "CERT": "/lb.pem",
		"CORE_1": "10.0.1.11:8443", "CORE_2": "10.0.1.12:8443", "CORE_3": "10.0.1.13:8443"}
	if err := coretest.SamePlaceholders(files[coretest.HAProxyConf], vals); err != nil {
		t.Fatal(err)
	}
	conf, err := coretest.FillPlaceholders(files[coretest.HAProxyConf], vals)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mode tcp", "backend " + coretest.HAProxyBackend, "option httpchk", "uri /readyz",
		"check-ssl", "verify required ca-file /r.crt", "verifyhost core.fleet.example.com", "crt /lb.pem", "server core-2 10.0.1.12:8443"} {
		if !strings.Contains(conf, want) {
			t.Errorf("%s: no %q in:\n%s", coretest.HAProxyConf, want, conf)
		}
	}
}
