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
