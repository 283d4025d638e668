package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	corecli "github.com/fleetprov/prov/core/cli"
	devicecli "github.com/fleetprov/prov/deviceclient/cli"
	pkicli "github.com/fleetprov/prov/pki/cli"
	proxycli "github.com/fleetprov/prov/proxy/cli"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

var mains = map[string]func(context.Context, []string, io.Writer, io.Writer) int{
	"prov-pki": pkicli.Main, "prov-core": corecli.Main, "prov-proxy": proxycli.Main, "prov-device": devicecli.Main,
}

// docFiles are the README and docs/*.md.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "docs", "*.md"))
	if err != nil || len(files) < 4 {
		t.Fatalf("docs: %v %v", files, err)
	}
	return append(files, filepath.Join(repoRoot(t), "README.md"))
}

// commands returns the prov-* command lines of a Markdown file's sh blocks,
// continuation lines joined.
func commands(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	in, cur := false, ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```sh"):
			in = true
			continue
		case strings.HasPrefix(line, "```"):
			in = false
			continue
		case !in:
			continue
		}
		cur += strings.TrimSuffix(strings.TrimSpace(line), "\\")
		if strings.HasSuffix(strings.TrimSpace(line), "\\") {
			cur += " "
			continue
		}
		if strings.HasPrefix(cur, "prov-") {
			cmds = append(cmds, cur)
		}
		cur = ""
	}
	return cmds
}

// words splits a command line as the shell would (quotes, no expansion).
func words(s string) []string {
	var out []string
	var w strings.Builder
	quote, inWord := rune(0), false
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				out = append(out, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, w.String())
	}
	return out
}

// TestDocumentedCommands: every prov-* command in the README and docs/ is
// one the binaries accept: the command exists and every flag is known.
func TestDocumentedCommands(t *testing.T) {
	n := 0
	for _, f := range docFiles(t) {
		for _, c := range commands(t, f) {
			n++
			args := words(c)
			main, ok := mains[args[0]]
			if !ok {
				t.Errorf("%s: %q: no such binary", filepath.Base(f), c)
				continue
			}
			var out, errb bytes.Buffer
			code := main(context.Background(), append(args[1:], "-h"), &out, &errb)
			msg := errb.String()
			if code != 2 || strings.Contains(msg, "not defined") || strings.Contains(msg, "unknown") || !strings.Contains(strings.ToLower(msg), "usage") {
				t.Errorf("%s: %q: exit %d\n%s", filepath.Base(f), c, code, msg)
			}
		}
	}
	if n < 20 {
		t.Fatalf("only %d commands found in the docs", n)
	}
}

// TestDocumentedRoutes: every route core and the proxy register is in
// docs/api.md.
func TestDocumentedRoutes(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for file, re := range map[string]*regexp.Regexp{
		"core/server/server.go":  regexp.MustCompile(`\{http\.Method(\w+), "([^"]+)"`),
		"proxy/server/server.go": regexp.MustCompile(`Handle(?:Func)?\("(\w+) ([^"]*)"`),
	} {
		src, err := os.ReadFile(filepath.Join(repoRoot(t), file))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(src), -1) {
			if m[2] == "" {
				continue // "POST "+enrollapi.PathEnroll, added below
			}
			routes = append(routes, strings.ToUpper(m[1])+" "+strings.TrimSuffix(m[2], "{$}"))
		}
	}
	routes = append(routes, "GET /metrics", "POST "+enrollapi.PathEnroll)
	if len(routes) < 18 {
		t.Fatalf("found %d routes: %v", len(routes), routes)
	}
	for _, r := range routes {
		if !bytes.Contains(doc, []byte("`"+r+"`")) && !bytes.Contains(doc, []byte("`"+r+",")) {
			t.Errorf("docs/api.md does not list %s", r)
		}
	}
}
