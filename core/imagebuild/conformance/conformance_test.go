package conformance_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleetprov/prov/core/imagebuild/conformance"
)

var suiteDir = filepath.Join("..", "..", "..", "testdata", "conformance")

// TestSuiteIsGenerated: the committed suite is exactly what the generator
// makes (same files, same bytes, no others), so it cannot drift from it.
// After changing the generator: go generate ./core/imagebuild/conformance.
func TestSuiteIsGenerated(t *testing.T) {
	files, err := conformance.Files()
	if err != nil {
		t.Fatal(err)
	}
	again, err := conformance.Files()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if !bytes.Equal(again[name], data) {
			t.Errorf("%s differs between two generations: the generator is not deterministic", name)
		}
		disk, err := os.ReadFile(filepath.Join(suiteDir, filepath.FromSlash(name)))
		if err != nil {
			t.Errorf("%v (regenerate: go generate ./core/imagebuild/conformance)", err)
			continue
		}
		if !bytes.Equal(disk, data) {
			t.Errorf("testdata/conformance/%s is not what the generator makes (regenerate: go generate ./core/imagebuild/conformance)", name)
		}
	}
	err = filepath.WalkDir(suiteDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(suiteDir, p)
		if err != nil {
			return err
		}
		if _, ok := files[filepath.ToSlash(rel)]; !ok && filepath.Ext(p) == ".bundle" {
			t.Errorf("testdata/conformance/%s is no case's bundle", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
