package status_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/status"
)

func TestBatchStats(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	b := status.NewBatches([]status.Plan{{Name: "po-1", Planned: 10, Quota: 10}, {Name: "po-2", Planned: 5}})
	rec := func(ago time.Duration, hw, result, rule string) {
		b.Observe(auditlog.Record{Time: now.Add(-ago), Board: "rpi4", HardwareID: hw, Batch: "po-1", Result: result, Rule: rule})
	}
	rec(3*time.Hour, "a", auditlog.Enrolled, "")                                                       // first pass
	rec(50*time.Minute, "b", auditlog.Refused, "reenrollment")                                         // retrying...
	rec(40*time.Minute, "b", auditlog.Enrolled, "")                                                    // ...then enrolled
	rec(30*time.Minute, "c", auditlog.Failed, "")                                                      // still retrying
	rec(20*time.Minute, "d", auditlog.Enrolled, "")                                                    // first pass
	rec(10*time.Minute, "d", auditlog.Refused, "reenrollment")                                         // enrolled already: not retrying
	b.Observe(auditlog.Record{Time: now, HardwareID: "x", Result: auditlog.Refused, Rule: "manifest"}) // no batch
	st := b.Stats(now)
	s := st["po-1"]
	if s.Attempts != 6 || s.Enrolled != 3 || s.RefusedBy["reenrollment"] != 2 || s.Failed != 1 || s.Retrying != 1 || s.Remaining != 7 ||
		s.PerHour != 2 || s.FirstPassYield != 0.5 || s.ETA != 210*time.Minute {
		t.Fatalf("po-1 %+v", s)
	}
	if z := st["po-2"]; z.Attempts != 0 || z.Remaining != 5 || z.ETA != 0 {
		t.Fatalf("po-2 %+v", z)
	}
	if len(st) != 2 {
		t.Fatalf("batches %v", st)
	}
}

func TestEveryRefusalHasAnAction(t *testing.T) {
	for _, rule := range []string{"network", "rate", "manifest", "window", "quota", "reenrollment", auditlog.RuleBadRequest, ""} {
		a := status.ActionFor(auditlog.Record{Result: auditlog.Refused, Rule: rule})
		if a == nil || a.What == "" || a.Do == "" || a.Rule == "" {
			t.Errorf("rule %q: %+v", rule, a)
		}
	}
	if a := status.ActionFor(auditlog.Record{Result: auditlog.Failed}); a == nil || a.Rule != auditlog.Failed {
		t.Errorf("a failure: %+v", a)
	}
	if a := status.ActionFor(auditlog.Record{Result: auditlog.Enrolled}); a != nil {
		t.Errorf("an enrollment: %+v", a)
	}
}

// docs/factory.md's refusal table says what the code says, word for word.
func TestActionsAreDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/factory.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range status.Actions {
		row := fmt.Sprintf("| `%s` | %s | %s |", a.Rule, a.What, a.Do)
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/factory.md lacks the row\n%s", row)
		}
	}
}
