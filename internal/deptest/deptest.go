// Package deptest guards what each binary links, in the spirit of
// tailscale's tstest/deptest: it runs `go list -deps` for a main package on
// each target platform and holds the list to the binary's Rules, a list of
// forbidden modules and packages and an allowlist of this module's own
// packages, each entry with its reason. A new import that breaks them fails
// the binary's deps_test.go with a message naming the package, the import
// path that brought it in and what to do.
package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Module is this module's path; Rules.Own is relative to it.
const Module = "github.com/fleetprov/prov"

// Platform is a build target.
type Platform struct {
	GOOS, GOARCH, GOARM string
}

func (p Platform) String() string {
	s := p.GOOS + "/" + p.GOARCH
	if p.GOARM != "" {
		s += "v" + p.GOARM
	}
	return s
}

// Host is the build host's usual platform, for the servers.
var Host = []Platform{{GOOS: "linux", GOARCH: "amd64"}}

// StepCA is what comes with step-ca's server (github.com/smallstep/certificates
// and the modules only it brings in): its authority, databases and cloud KMS
// code. Only prov-pki, which embeds the CA (pki/ca), may link it; every other
// binary reaches step-ca over HTTP with pki/stepca.
var StepCA = map[string]string{
	"github.com/smallstep/certificates": "step-ca itself (authority, ACME, SCEP, admin API); talk to it with pki/stepca",
	"github.com/smallstep/nosql":        "step-ca's database layer (badger, bbolt, MySQL, PostgreSQL)",
	"github.com/smallstep/linkedca":     "step-ca's linked-CA and admin protobufs",
	"github.com/dgraph-io/badger":       "a database step-ca's nosql links",
	"github.com/go-sql-driver/mysql":    "the MySQL driver step-ca's nosql links",
	"github.com/jackc/pgx":              "the PostgreSQL driver step-ca's nosql links",
	"go.step.sm/crypto/kms":             "step-ca's key management back-ends (cloud KMS, PKCS #11, TPM)",
	"cloud.google.com/go":               "Google Cloud clients, brought in by step-ca's cloud KMS and CAS code",
	"google.golang.org/grpc":            "gRPC, brought in by step-ca's cloud clients and linked CA",
}

// Join returns the union of maps of reasons (a later map's reason wins).
func Join(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		maps.Copy(out, m)
	}
	return out
}

// Package is one package a binary links.
type Package struct {
	ImportPath string
	// Own is true for this module's packages.
	Own     bool
	Imports []string
}

// List returns the packages pkg links on p, the standard library left out
// (go list -deps, CGO_ENABLED=0 as the binaries are built), pkg first.
func List(pkg string, p Platform) ([]Package, error) {
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard,Module,Imports", pkg) //nolint:gosec // a test tool; pkg is a package path from a test
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.GOOS, "GOARCH="+p.GOARCH, "GOARM="+p.GOARM)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -deps %s (%s): %w\n%s", pkg, p, err, stderr.Bytes())
	}
	var pkgs []Package
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var lp struct {
			ImportPath string
			Standard   bool
			Module     *struct{ Main bool }
			Imports    []string
		}
		if err := dec.Decode(&lp); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list -deps %s (%s): %w", pkg, p, err)
		}
		if lp.Standard {
			continue
		}
		pkgs = append(pkgs, Package{ImportPath: lp.ImportPath, Own: lp.Module != nil && lp.Module.Main, Imports: lp.Imports})
	}
	// go list prints dependencies first; put the root first.
	slices.Reverse(pkgs)
	return pkgs, nil
}

// Synthetic is a made-up list in which this module's package root (relative
// to Module) imports each of imports directly: for proving that a guard
// fails on an import nobody has written yet.
func Synthetic(root string, imports ...string) []Package {
	abs := func(p string) string {
		if strings.Contains(strings.SplitN(p, "/", 2)[0], ".") {
			return p // another module's package
		}
		return Module + "/" + p
	}
	pkgs := []Package{{ImportPath: abs(root), Own: true}}
	for _, imp := range imports {
		pkgs[0].Imports = append(pkgs[0].Imports, abs(imp))
		pkgs = append(pkgs, Package{ImportPath: abs(imp), Own: abs(imp) != imp})
	}
	return pkgs
}

// Rules are what one binary may link.
type Rules struct {
	// Forbidden maps a module or package path to why the binary must not
	// link it; everything below the path is forbidden too.
	Forbidden map[string]string
	// Own maps this module's packages the binary may link, relative to
	// Module ("pki/stepca"; "deviceclient/..." for a whole tree), to why it
	// may. Any other own package is a violation.
	Own map[string]string
}

// under reports whether path is prefix or below it.
func under(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}

// allowed returns the Own entry that admits the own package path, if any.
func (r Rules) allowed(path string) (string, bool) {
	rel := strings.TrimPrefix(strings.TrimPrefix(path, Module), "/")
	for k := range r.Own {
		if tree, ok := strings.CutSuffix(k, "/..."); ok && under(rel, tree) || k == rel {
			return k, true
		}
	}
	return "", false
}

// Violations returns the messages for what pkgs (List's answer, the root
// first) break: one per forbidden entry met (naming the linked package
// under it that is nearest the root, and how many more there are) and one
// per own package off the allowlist.
func (r Rules) Violations(pkgs []Package) []string {
	if len(pkgs) == 0 {
		return nil
	}
	chain := importChains(pkgs)
	root := pkgs[0].ImportPath
	var out []string
	hits := map[string][]string{} // forbidden entry -> linked packages under it
	for _, p := range pkgs {
		entry := ""
		for k := range r.Forbidden {
			if under(p.ImportPath, k) && len(k) > len(entry) {
				entry = k
			}
		}
		switch {
		case entry != "":
			hits[entry] = append(hits[entry], p.ImportPath)
		case p.Own:
			if _, ok := r.allowed(p.ImportPath); !ok {
				out = append(out, fmt.Sprintf("%s links %s (through %s), which is not on its allowlist: "+
					"remove the import, or add the package to Own in deps_test.go with the reason this binary needs it",
					root, p.ImportPath, strings.Join(chain(p.ImportPath), " -> ")))
			}
		}
	}
	for entry, linked := range hits {
		nearest := slices.MinFunc(linked, func(a, b string) int { return len(chain(a)) - len(chain(b)) })
		more := ""
		switch n := len(linked) - 1; {
		case n == 1:
			more = " and 1 more package under " + entry
		case n > 1:
			more = fmt.Sprintf(" and %d more packages under %s", n, entry)
		}
		out = append(out, fmt.Sprintf("%s links %s%s (through %s), which is forbidden: %s",
			root, nearest, more, strings.Join(chain(nearest), " -> "), r.Forbidden[entry]))
	}
	slices.Sort(out)
	return out
}

// Unused returns the Own entries that admit none of the packages linked
// on any of the platforms (lists), so the allowlist does not outlive the
// imports that needed it.
func (r Rules) Unused(lists ...[]Package) []string {
	used := map[string]bool{}
	for _, pkgs := range lists {
		for _, p := range pkgs {
			if k, ok := r.allowed(p.ImportPath); ok && p.Own {
				used[k] = true
			}
		}
	}
	var out []string
	for k := range r.Own {
		if !used[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// importChains returns, for a linked package, the shortest chain of imports
// from the root to it (this module's prefix left out), for a failure
// message.
func importChains(pkgs []Package) func(string) []string {
	imports := make(map[string][]string, len(pkgs))
	for _, p := range pkgs {
		imports[p.ImportPath] = p.Imports
	}
	root := pkgs[0].ImportPath
	parent := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, next := range imports[cur] {
			if _, seen := parent[next]; !seen {
				parent[next] = cur
				queue = append(queue, next)
			}
		}
	}
	return func(path string) []string {
		var chain []string
		for p := path; p != ""; p = parent[p] {
			chain = append(chain, strings.TrimPrefix(p, Module+"/"))
			if _, ok := parent[p]; !ok {
				break
			}
		}
		slices.Reverse(chain)
		return chain
	}
}

// Check lists what pkg links on each platform and fails t for every
// violation of r and every unused Own entry. It runs go list, so it skips
// in -short.
func Check(t testing.TB, pkg string, platforms []Platform, r Rules) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs go list; skipped in -short")
	}
	var lists [][]Package
	for _, p := range platforms {
		pkgs, err := List(pkg, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range r.Violations(pkgs) {
			t.Errorf("%s: %s", p, v)
		}
		lists = append(lists, pkgs)
	}
	for _, k := range r.Unused(lists...) {
		t.Errorf("%s links nothing that Own entry %q admits, on any of %v: remove the entry", pkg, k, platforms)
	}
}

// CatchesImport proves that r fails on an import nobody has written yet:
// from (relative to Module) importing to must give one violation that names
// to.
func CatchesImport(t testing.TB, r Rules, from, to string) {
	t.Helper()
	pkgs := Synthetic(from, to)
	got := r.Violations(pkgs)
	if len(got) != 1 || !strings.Contains(got[0], pkgs[1].ImportPath+" (through") {
		t.Errorf("%s -> %s: violations %q; want one naming %s", from, to, got, pkgs[1].ImportPath)
	}
}

// Catches proves that r fails on a real package: among what pkg links on p
// there must be a violation naming want (a package path or a prefix of
// one). It runs go list, so it skips in -short.
func Catches(t testing.TB, pkg string, p Platform, r Rules, want string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs go list; skipped in -short")
	}
	pkgs, err := List(pkg, p)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range r.Violations(pkgs) {
		if strings.Contains(v, " links "+want) {
			return
		}
	}
	t.Errorf("the rules find nothing under %s in what %s links on %s", want, pkg, p)
}
