package buildinfo_test

import (
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/buildinfo"
)

func TestTime(t *testing.T) {
	old := buildinfo.CommitTime
	t.Cleanup(func() { buildinfo.CommitTime = old })
	buildinfo.CommitTime = "2026-11-29T22:02:30+01:00"
	if got, want := buildinfo.Time(), time.Date(2026, 11, 29, 21, 2, 30, 0, time.UTC); !got.Equal(want) || got.Location() != time.UTC {
		t.Fatalf("Time() = %v; want %v", got, want)
	}
	// Not a time: what the toolchain stamped, which a test binary lacks.
	buildinfo.CommitTime = "yesterday"
	if got := buildinfo.Time(); !got.IsZero() {
		t.Fatalf("Time() without a stamp = %v; want zero", got)
	}
}
