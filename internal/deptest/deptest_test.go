package deptest_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/fleetprov/prov/internal/deptest"
)

var rules = deptest.Rules{
	Forbidden: map[string]string{
		"example.com/heavy":             "too heavy",
		deptest.Module + "/pki/ca":      "embeds step-ca",
		"example.com/heavy/light/inner": "the innermost reason",
	},
	Own: map[string]string{
		"deviceclient/...": "its own code",
		"pki":              "trust",
		"pki/stepca":       "renewal",
	},
}

func TestViolations(t *testing.T) {
	for _, tc := range []struct {
		name string
		pkgs []deptest.Package
		want []string // substrings of the one violation; none: no violation
	}{
		{"allowed exactly and by tree", deptest.Synthetic("deviceclient/cmd/prov-device", "deviceclient/agent", "pki", "pki/stepca", "example.com/fine"), nil},
		{"own package off the allowlist", deptest.Synthetic("deviceclient/agent", "core/store"),
			[]string{deptest.Module + "/core/store", "deviceclient/agent -> core/store", "not on its allowlist", "add the package to Own"}},
		{"an allowed tree's name is not a prefix match", deptest.Synthetic("deviceclient/agent", "deviceclientx"),
			[]string{deptest.Module + "/deviceclientx", "not on its allowlist"}},
		{"forbidden module, below its path", deptest.Synthetic("deviceclient/agent", "example.com/heavy/sub"),
			[]string{"example.com/heavy/sub", "forbidden: too heavy"}},
		{"forbidden wins over the allowlist", deptest.Synthetic("deviceclient/agent", "pki/ca"),
			[]string{deptest.Module + "/pki/ca", "forbidden: embeds step-ca"}},
		{"one message per forbidden entry, naming the nearest package",
			deptest.Synthetic("deviceclient/agent", "example.com/heavy/a/b", "example.com/heavy/c", "example.com/heavy/d"),
			[]string{"links example.com/heavy/a/b and 2 more packages under example.com/heavy (through deviceclient/agent -> example.com/heavy/a/b)"}},
		{"the most specific reason", deptest.Synthetic("deviceclient/agent", "example.com/heavy/light/inner/x"),
			[]string{"the innermost reason"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := rules.Violations(tc.pkgs)
			if len(tc.want) == 0 {
				if len(got) > 0 {
					t.Fatalf("violations %q; want none", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("violations %q; want exactly one", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("violation %q does not say %q", got[0], w)
				}
			}
		})
	}
}

// The chain in a message is the shortest path of imports from the root.
func TestViolationNamesTheImportChain(t *testing.T) {
	m := deptest.Module + "/"
	pkgs := []deptest.Package{
		{ImportPath: m + "deviceclient/cmd/prov-device", Own: true, Imports: []string{m + "deviceclient/cli"}},
		{ImportPath: m + "deviceclient/cli", Own: true, Imports: []string{m + "deviceclient/agent", m + "pki"}},
		{ImportPath: m + "deviceclient/agent", Own: true, Imports: []string{"example.com/heavy"}},
		{ImportPath: m + "pki", Own: true},
		{ImportPath: "example.com/heavy", Imports: nil},
	}
	got := rules.Violations(pkgs)
	want := "(through deviceclient/cmd/prov-device -> deviceclient/cli -> deviceclient/agent -> example.com/heavy)"
	if len(got) != 1 || !strings.Contains(got[0], want) {
		t.Fatalf("violations %q; want one naming %s", got, want)
	}
}

func TestUnused(t *testing.T) {
	a := deptest.Synthetic("deviceclient/agent", "pki")
	b := deptest.Synthetic("deviceclient/agent")
	if got := rules.Unused(a, b); !slices.Equal(got, []string{"pki/stepca"}) {
		t.Fatalf("unused %q; want [pki/stepca]", got)
	}
}

// List reads what go list says: the root first, no standard library, this
// module's packages marked.
func TestList(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list; skipped in -short")
	}
	pkgs, err := deptest.List(deptest.Module+"/internal/deptest", deptest.Host[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 1 || pkgs[0].ImportPath != deptest.Module+"/internal/deptest" || !pkgs[0].Own || !slices.Contains(pkgs[0].Imports, "os/exec") {
		t.Fatalf("go list -deps internal/deptest: %+v", pkgs)
	}
}
