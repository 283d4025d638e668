package signedimage_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/fleetprov/prov/pki/signedimage"
)

// TestSpecificationSteps: docs/image-format.md, section 3, numbers the
// checks in the order signedimage.Steps runs them, each with the error
// name the code reports, and reserves the inspection's range. (Which step
// refuses what is proved by the conformance suite, whose every case names
// its step: deviceclient/install.TestConformance.)
func TestSpecificationSteps(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "image-format.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^(\d+)\.(?: to (\d+)\.)? \*\*([a-z ]+)\*\*: `)
	type line struct {
		from, to int
		name     string
	}
	var got []line
	for _, m := range re.FindAllSubmatch(doc, -1) {
		from, _ := strconv.Atoi(string(m[1]))
		to := from
		if len(m[2]) > 0 {
			to, _ = strconv.Atoi(string(m[2]))
		}
		got = append(got, line{from, to, string(m[3])})
	}
	var want []line
	for _, s := range signedimage.Steps() {
		if s == signedimage.StepMetadata {
			want = append(want, line{int(signedimage.StepInspection), int(signedimage.StepInspectionLast), string(signedimage.StepInspection.Reason())})
		}
		want = append(want, line{int(s), int(s), string(s.Reason())})
	}
	if len(got) != len(want) {
		t.Fatalf("the document numbers %d checks, the code %d:\n%v\n%v", len(got), len(want), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("check %d: the document says %v, the code %v", i+1, got[i], want[i])
		}
	}
}
