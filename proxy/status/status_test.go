package status_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/status"
)

func TestLine(t *testing.T) {
	l := status.New()
	if s := l.Snapshot(); s.Day != "" || len(s.Counts) != 0 || len(s.Recent) != 0 {
		t.Fatalf("empty line: %+v", s)
	}
	yesterday := time.Now().Add(-24 * time.Hour)
	l.Observe(auditlog.Record{Seq: 1, Time: yesterday, Result: auditlog.Enrolled})
	today := time.Now()
	for i := range status.MaxRecent + 5 {
		result := auditlog.Enrolled
		if i%5 == 0 {
			result = auditlog.Refused
		}
		l.Observe(auditlog.Record{Seq: uint64(i + 2), Time: today, Result: result, Serial: fmt.Sprintf("%010x", i)})
	}
	// A record older than today's counts (the clock went back) is not counted.
	l.Observe(auditlog.Record{Seq: 999, Time: yesterday, Result: auditlog.Failed})
	s := l.Snapshot()
	if s.Day != today.Local().Format(time.DateOnly) {
		t.Errorf("day %q", s.Day)
	}
	if s.Counts[auditlog.Enrolled] != 44 || s.Counts[auditlog.Refused] != 11 || s.Counts[auditlog.Failed] != 0 {
		t.Errorf("today's counts %v (yesterday's must not count)", s.Counts)
	}
	if len(s.Recent) != status.MaxRecent || s.Recent[0].Seq != status.MaxRecent+6 || s.Recent[len(s.Recent)-1].Seq != 7 {
		t.Errorf("recent: %d, newest %d, oldest %d", len(s.Recent), s.Recent[0].Seq, s.Recent[len(s.Recent)-1].Seq)
	}
	s.Counts[auditlog.Enrolled] = 0
	if l.Snapshot().Counts[auditlog.Enrolled] != 44 {
		t.Error("a snapshot shares its counts with the line")
	}
}
