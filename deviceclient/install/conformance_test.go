package install_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/deviceclient/inspect"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/signedimage"
)

// conformanceDir is the suite core/imagebuild/conformance generates.
var conformanceDir = filepath.Join("..", "..", "testdata", "conformance")

type conformanceCase struct {
	Name      string
	Bundle    string
	Serial    string
	HighWater uint64
	Clock     string
	Floor     *string
	Kept      bool
	Verdict   string
	Error     string
	Step      int
	Check     string
}

// inspectionUncased names the inspection's checks the suite has no case
// for, and why (deviceclient/inspect tests each).
var inspectionUncased = map[string]string{
	"image-size":    "an image over the cap is refused at step 22, before the inspection",
	"content-size":  "no change of a good image's bytes reaches it before an earlier check",
	"data-limits":   "no change of a good image's bytes reaches it before an earlier check",
	"fixed-files":   "no change of a good image's bytes reaches it before an earlier check",
	"second-reader": "a disagreement of two readers; no image is known that makes it",
}

// TestConformance runs the device's verifier (signedimage.Verify, then
// install.Check, as install, boot and prov-device verify do) over every
// case of the conformance suite: the verdict, the error name and the step
// of docs/image-format.md must be the suite's. A step reported other than
// the suite's means the code runs the checks in another order than the
// specification.
func TestConformance(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(conformanceDir, "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Root         string
		MaxImageSize int64
		Cases        []conformanceCase
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Cases) == 0 {
		t.Fatal("no cases")
	}
	parse := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	seen := map[signedimage.Step]bool{}
	checked := map[string]bool{} // the inspection's checks that refused a case
	for _, c := range m.Cases {
		t.Run(c.Name, func(t *testing.T) {
			roots, err := pki.LoadTrustBundle(filepath.Join(conformanceDir, m.Root)) // a fresh memo per case
			if err != nil {
				t.Fatal(err)
			}
			bundle, err := os.ReadFile(filepath.Join(conformanceDir, filepath.FromSlash(c.Bundle)))
			if err != nil {
				t.Fatal(err)
			}
			o := signedimage.VerifyOptions{Roots: roots, Serial: c.Serial, MinGeneration: c.HighWater, Now: parse(c.Clock),
				MaxImageSize: m.MaxImageSize, AtIssue: c.Kept}
			if c.Floor != nil {
				o.Floor = pki.NewFloor(parse(*c.Floor), nil)
			}
			v, img, err := signedimage.VerifyBytes(bundle, o)
			if err == nil {
				_, err = install.Check(v, img, imagespec.DefaultRules())
			}
			var gotErr, gotCheck string
			var gotStep int
			if ref, ok := signedimage.RefusalOf(err); ok {
				gotErr, gotStep = string(ref.Reason), int(ref.Step)
				seen[ref.Step] = true
			}
			if check, ok := errors.AsType[*inspect.Check](err); ok {
				gotCheck = check.Name()
				checked[gotCheck] = true
			}
			switch {
			case c.Verdict == "accepted" && err != nil:
				t.Fatalf("refused: %v; the suite accepts it", err)
			case c.Verdict == "refused" && err == nil:
				t.Fatalf("accepted; the suite refuses it with %s at step %d", c.Error, c.Step)
			case c.Verdict == "refused" && (gotErr != c.Error || gotStep != c.Step):
				t.Fatalf("refused with %q at step %d (%v); the suite says %q at step %d", gotErr, gotStep, err, c.Error, c.Step)
			case c.Verdict == "refused" && gotCheck != c.Check:
				t.Fatalf("refused by the inspection's check %q (%v); the suite says %q", gotCheck, err, c.Check)
			}
		})
	}
	// Every check of the specification has a case that it decides.
	for _, s := range signedimage.Steps() {
		if !seen[s] {
			t.Errorf("no case of the suite is refused at step %d (%s)", s, s.Reason())
		}
	}
	// And every check of the inspection (section 6), but those no bundle's
	// image can reach.
	for _, c := range inspect.Checks() {
		if _, ok := inspectionUncased[c.Name()]; !ok && !checked[c.Name()] {
			t.Errorf("no case of the suite is refused by the inspection's check %s", c.Name())
		}
	}
	if !bytes.Contains(raw, []byte(`"verdict": "accepted"`)) {
		t.Error("no case is accepted")
	}
}
