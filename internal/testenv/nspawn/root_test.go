package nspawn

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fleetprov/prov/internal/testenv"
)

// stand-in for mmdebstrap, for the cache's own logic (a real build takes
// most of a minute; TestMachine makes one): it records each run in $RUNS,
// fails if $FAIL is set (after writing into the tree, as a build cut short
// would), and otherwise marks the tree complete. The target directory is
// its second-to-last argument.
const fakeMmdebstrap = `#!/bin/sh
echo run >> "$RUNS"
eval target=\${$(($# - 1))}
echo partial > "$target/partial"
[ -z "$FAIL" ] || { echo "E: the build failed" >&2; exit 1; }
echo done > "$target/complete"
`

func fakeBuilder(t *testing.T) (mmdebstrap string, runs func() int) {
	t.Helper()
	testenv.Root(t, "the build runs in a mount namespace of its own")
	dir := t.TempDir()
	mmdebstrap = filepath.Join(dir, "mmdebstrap")
	if err := os.WriteFile(mmdebstrap, []byte(fakeMmdebstrap), 0o755); err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(dir, "runs")
	t.Setenv("RUNS", record)
	return mmdebstrap, func() int {
		b, _ := os.ReadFile(record)
		return strings.Count(string(b), "run\n")
	}
}

// Many callers at once build the root once, and only into place when
// complete; later callers find it without building.
func TestCachedRootBuildsOnce(t *testing.T) {
	mmdebstrap, runs := fakeBuilder(t)
	cache := t.TempDir()
	const callers = 8
	roots := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() { roots[i], errs[i] = cachedRoot(cache, mmdebstrap) })
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil || roots[i] != roots[0] {
			t.Fatalf("caller %d: %q, %v; caller 0: %q", i, roots[i], errs[i], roots[0])
		}
	}
	if _, err := os.Stat(filepath.Join(roots[0], "complete")); err != nil {
		t.Fatalf("the root is not the finished build: %v", err)
	}
	if _, err := cachedRoot(cache, mmdebstrap); err != nil {
		t.Fatal(err)
	}
	if n := runs(); n != 1 {
		t.Fatalf("mmdebstrap ran %d times, want once", n)
	}
}

// A failed build leaves nothing that looks like a root; a build directory
// left by a killed build is removed, never used; the next call builds.
func TestCachedRootNeverHalfBuilt(t *testing.T) {
	mmdebstrap, runs := fakeBuilder(t)
	cache := t.TempDir()
	t.Setenv("FAIL", "1")
	if root, err := cachedRoot(cache, mmdebstrap); err == nil || !strings.Contains(err.Error(), "the build failed") {
		t.Fatalf("a failed build gave %q, %v; want its error with mmdebstrap's output", root, err)
	}
	entries, err := os.ReadDir(cache)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Fatalf("a failed build left %s in the cache", e.Name())
		}
	}

	t.Setenv("FAIL", "")
	killed := filepath.Join(cache, rootName()+".building-1")
	if err := os.Mkdir(killed, 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := cachedRoot(cache, mmdebstrap)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(killed); !os.IsNotExist(err) {
		t.Fatalf("the killed build's directory is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "complete")); err != nil {
		t.Fatalf("no finished root after the failure: %v", err)
	}
	if n := runs(); n != 2 {
		t.Fatalf("mmdebstrap ran %d times, want 2", n)
	}
}
