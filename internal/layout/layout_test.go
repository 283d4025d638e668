package layout_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestEveryPackageHasDoc: every package of the module (with code besides
// tests) says in a package comment what it is for.
func TestEveryPackageHasDoc(t *testing.T) {
	root := moduleRoot(t)
	n := 0
	for _, dir := range packages(t, root) {
		code, doc := packageDoc(t, filepath.Join(root, dir))
		if !code {
			continue
		}
		n++
		if strings.TrimSpace(doc) == "" {
			t.Errorf("package %s has no package comment", dir)
		}
	}
	if n < 5 {
		t.Fatalf("found only %d packages; the walk is broken", n)
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found from internal/layout: %v", err)
	}
	return root
}

// packages lists the module's package directories, relative to the root.
func packages(t *testing.T, root string) []string {
	t.Helper()
	var dirs []string
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(name, ".go") {
			return nil
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		if !seen[rel] {
			seen[rel] = true
			dirs = append(dirs, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// TestReadmeMapsEveryPackage: the README's "Where things live" table names
// every package of the module (test helpers too), and names nothing that
// is not there.
func TestReadmeMapsEveryPackage(t *testing.T) {
	root := moduleRoot(t)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "Where things live.")
	if !ok {
		t.Fatal(`README.md has no "Where things live." table`)
	}
	table, _, _ = strings.Cut(table, "\n## ")
	mapped := map[string]bool{}
	path := regexp.MustCompile("`([a-z0-9_./-]+)`")
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range path.FindAllStringSubmatch(cells[1], -1) {
			p := strings.TrimSuffix(m[1], "/")
			if _, err := os.Stat(filepath.Join(root, p)); err != nil {
				t.Errorf("README.md maps %s, which does not exist", m[1])
			}
			mapped[p] = true
		}
	}
	for _, dir := range packages(t, root) {
		if dir != "." && !mapped[dir] {
			t.Errorf("README.md's map does not name package %s/", dir)
		}
	}
}

// binaries are the four commands.
var binaries = map[string]string{
	"prov-pki":    "./pki/cmd/prov-pki",
	"prov-core":   "./core/cmd/prov-core",
	"prov-proxy":  "./proxy/cmd/prov-proxy",
	"prov-device": "./deviceclient/cmd/prov-device",
}

// TestContractsSayWhoLinksThem: every package under a part's contract/
// says in its package comment "Contract: linked by" and exactly the
// binaries that link it, and that a change reaches boards in the field
// when the device is one of them.
func TestContractsSayWhoLinksThem(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list; skipped in -short")
	}
	root := moduleRoot(t)
	const module = "github.com/fleetprov/prov/"
	linkedBy := map[string][]string{}
	for name, pkg := range binaries {
		cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, p := range strings.Fields(string(out)) {
			if rel, ok := strings.CutPrefix(p, module); ok {
				linkedBy[rel] = append(linkedBy[rel], name)
			}
		}
	}
	statement := regexp.MustCompile(`Contract: linked by ([a-z, -]+?)\.`)
	n := 0
	for _, dir := range packages(t, root) {
		if !strings.Contains(dir, "/contract/") {
			continue
		}
		n++
		_, doc := packageDoc(t, filepath.Join(root, dir))
		m := statement.FindStringSubmatch(strings.Join(strings.Fields(doc), " "))
		if m == nil {
			t.Errorf("%s: its package comment does not say \"Contract: linked by ...\"", dir)
			continue
		}
		var said []string
		for _, b := range strings.FieldsFunc(m[1], func(r rune) bool { return r == ',' || r == ' ' }) {
			if b != "and" {
				said = append(said, b)
			}
		}
		slices.Sort(said)
		really := slices.Sorted(slices.Values(linkedBy[dir]))
		if !slices.Equal(said, really) {
			t.Errorf("%s says it is linked by %v; it is linked by %v", dir, said, really)
		}
		if slices.Contains(really, "prov-device") && !strings.Contains(strings.Join(strings.Fields(doc), " "), "reaches boards in the field") {
			t.Errorf("%s is linked by the device but does not say a change reaches boards in the field", dir)
		}
	}
	if n < 4 {
		t.Fatalf("found %d contract packages; the walk is broken", n)
	}
}

// packageDoc says whether dir has code besides tests, and its package
// comment.
func packageDoc(t *testing.T, dir string) (code bool, doc string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, e.Name()), nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		code = true
		if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
			return true, f.Doc.Text()
		}
	}
	return code, ""
}
