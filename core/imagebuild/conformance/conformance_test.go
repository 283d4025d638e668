package conformance_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/imagebuild/conformance"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/signedimage"
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

// python3 is a Python 3 with the cryptography package, or the test skips
// (fails under PROV_REQUIRE_ALL=1).
func python3(t *testing.T) string {
	t.Helper()
	py := testenv.Tool(t, "python3", "install python3 (Debian: apt-get install python3 python3-cryptography)")
	if out, err := exec.Command(py, "-c", "import cryptography").CombinedOutput(); err != nil { //nolint:gosec // a test's own tool
		testenv.Missing(t, "python3 has no cryptography package (Debian: apt-get install python3-cryptography): %v\n%s", err, out)
	}
	return py
}

// TestPythonVerifier runs testdata/conformance/verify.py, a verifier
// written from docs/image-format.md in Python, over the suite: every
// verdict, error name and step must be the suite's. Where it and the
// suite disagree, the document decides (fix it or the Go code, not the
// Python to match the Go).
func TestPythonVerifier(t *testing.T) {
	py := python3(t)
	cmd := exec.Command(py, filepath.Join(suiteDir, "verify.py"), "--json", suiteDir) //nolint:gosec // the suite's own script
	out, err := cmd.Output()
	if err != nil {
		t.Errorf("verify.py: %v", err)
	}
	var m conformance.Manifest
	raw, rerr := os.ReadFile(filepath.Join(suiteDir, "cases.json"))
	if rerr != nil {
		t.Fatal(rerr)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	byName := map[string]conformance.Case{}
	for _, c := range m.Cases {
		byName[c.Name] = c
	}
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if len(lines) != len(m.Cases) {
		t.Fatalf("verify.py reported %d cases of %d:\n%s", len(lines), len(m.Cases), out)
	}
	for _, l := range lines {
		var r struct {
			Name      string
			OK        bool
			Got, Want map[string]any
			Detail    string
		}
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		if !r.OK {
			t.Errorf("%s: verify.py says %v (%s), the suite %v", r.Name, r.Got, r.Detail, r.Want)
		}
		// A refusal by the inspection names its check, as the suite does.
		if c, ok := byName[r.Name]; ok && c.Check != "" && r.Got["check"] != c.Check {
			t.Errorf("%s: verify.py names check %v, the suite %s", r.Name, r.Got["check"], c.Check)
		}
	}
}

// TestPythonVerifierCanDisagree: verify.py fails on a suite whose verdict
// it does not share, so TestPythonVerifier can fail.
func TestPythonVerifierCanDisagree(t *testing.T) {
	py := python3(t)
	dir := t.TempDir()
	files, err := conformance.Files()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if name == "cases.json" {
			data = bytes.Replace(data, []byte(`"error": "rollback"`), []byte(`"error": "wrong device"`), 1)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil { //nolint:gosec // test data
			t.Fatal(err)
		}
	}
	out, err := exec.Command(py, filepath.Join(suiteDir, "verify.py"), dir).CombinedOutput() //nolint:gosec // the suite's own script
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !bytes.Contains(out, []byte("DISAGREES")) {
		t.Fatalf("verify.py on a wrong suite: %v\n%s", err, out)
	}
}

// TestPythonVerifierOnADeployment: verify.py accepts a bundle signed by the
// signer prov-pki init issues (ECDSA root and intermediate, name
// constraints, as step-ca makes them), not only the suite's Ed25519 PKI,
// and refuses it as a rollback above its generation.
func TestPythonVerifierOnADeployment(t *testing.T) {
	py := python3(t)
	d := catest.NewPKI(t)
	s, err := signedimage.LoadSigner(d.IdentityCert(pki.RoleSigner, deployment.DefaultSignerName), d.IdentityKey(pki.RoleSigner, deployment.DefaultSignerName))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	rec := &imagebuild.Record{Serial: "1a2b3c4d5e", Generation: 2, IssuedAt: now, Hostname: "dev-1a2b3c4d5e",
		MQTTClientID: "1a2b3c4d5e", MQTTGroupID: "fleet", Data: map[string]string{"/etc/prov/data/site": "lab-1\n"}}
	bundle, _, err := imagebuild.BuildBundle(rec, imagespec.DefaultRules(), s)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(d.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	clock := now.Add(time.Minute).Format(time.RFC3339)
	m := conformance.Manifest{Root: "root.pem", MaxImageSize: imagespec.MaxImageSize, Cases: []conformance.Case{
		{Name: "deployment: accepted", Bundle: "b.bundle", Serial: rec.Serial, HighWater: 2, Clock: clock, Verdict: conformance.Accepted},
		{Name: "deployment: rollback", Bundle: "b.bundle", Serial: rec.Serial, HighWater: 3, Clock: clock, Verdict: conformance.Refused,
			Error: string(signedimage.ReasonRollback), Step: int(signedimage.StepGeneration)},
	}}
	j, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{"root.pem": root, "b.bundle": bundle, "cases.json": j} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil { //nolint:gosec // test data
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(py, filepath.Join(suiteDir, "verify.py"), dir).CombinedOutput(); err != nil { //nolint:gosec // the suite's own script
		t.Fatalf("verify.py: %v\n%s", err, out)
	}
}
