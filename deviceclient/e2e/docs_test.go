package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	corecli "github.com/fleetprov/prov/core/cli"
	"github.com/fleetprov/prov/core/contract/coreapi"
	devicecli "github.com/fleetprov/prov/deviceclient/cli"
	"github.com/fleetprov/prov/pki"
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
			// A shell comment ends the command; an optional flag written as
			// a synopsis ("[--json]") is the flag.
			for i, a := range args {
				if strings.HasPrefix(a, "#") {
					args = args[:i]
					break
				}
				if strings.HasPrefix(a, "[-") && strings.HasSuffix(a, "]") {
					args[i] = strings.Trim(a, "[]")
				}
			}
			main, ok := mains[args[0]]
			if !ok {
				t.Errorf("%s: %q: no such binary", filepath.Base(f), c)
				continue
			}
			// -h after a known command and known flags is help: exit 0.
			var out, errb bytes.Buffer
			code := main(context.Background(), append(args[1:], "-h"), &out, &errb)
			if code != 0 || errb.Len() > 0 || !strings.Contains(strings.ToLower(out.String()), "usage") {
				t.Errorf("%s: %q: exit %d\n%s", filepath.Base(f), c, code, errb.String())
			}
		}
	}
	if n < 20 {
		t.Fatalf("only %d commands found in the docs", n)
	}
}

// TestDocumentedRoutes: docs/api.md's tables list exactly the routes of
// the contracts' route tables (the ones the servers register and the
// clients call), each of core's with its roles.
func TestDocumentedRoutes(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	core, proxy, found := string(doc), "", false
	if core, proxy, found = strings.Cut(core, "## Proxy"); !found {
		t.Fatal(`docs/api.md has no "## Proxy" section`)
	}
	check := func(section, name string, routes []coreapi.Route, withRoles bool) {
		documented := documentedRoutes(section)
		for _, r := range routes {
			key := r.Method + " " + r.Path
			roles, ok := documented[key]
			if !ok {
				t.Errorf("docs/api.md (%s) does not list %s", name, key)
				continue
			}
			delete(documented, key)
			if !withRoles {
				continue
			}
			want := map[string]bool{}
			for _, role := range r.Roles {
				want[string(role)] = true
			}
			if r.Public() {
				want["anyone"] = true
			}
			if !maps.Equal(roles, want) {
				t.Errorf("docs/api.md: %s for %v, the route table says %v", key, slices.Sorted(maps.Keys(roles)), slices.Sorted(maps.Keys(want)))
			}
		}
		for key := range documented {
			t.Errorf("docs/api.md (%s) lists %s, which no route table has", name, key)
		}
	}
	check(core, "core", coreapi.Routes, true)
	check(proxy, "proxy", enrollapi.Routes, false)
}

// documentedRoutes reads the route tables of a section: each row's first
// cell holds one or more `METHOD PATH`, its second the roles (words from
// pki.Roles, or "anyone").
func documentedRoutes(section string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	route := regexp.MustCompile("`([A-Z]+ /[^`]*)`")
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		roles := map[string]bool{}
		for _, w := range strings.FieldsFunc(cells[2], func(r rune) bool { return !unicode.IsLetter(r) }) {
			if _, err := pki.ParseRole(w); err == nil || w == "anyone" {
				roles[w] = true
			}
		}
		for _, m := range route.FindAllStringSubmatch(cells[1], -1) {
			out[m[1]] = roles
		}
	}
	return out
}
