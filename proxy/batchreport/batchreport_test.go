package batchreport_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/batchreport"
)

// TestHostileValuesInCSV: hardware IDs, boards and reasons are device
// input; a cell a spreadsheet would run as a formula is quoted in the CSV
// and unchanged in the JSON. The record is a real one (auditlog), written
// directly: the proxy refuses such IDs before they reach a batch, so this
// is the report's own defence.
func TestHostileValuesInCSV(t *testing.T) {
	path := filepath.Join(t.TempDir(), "factory.jsonl")
	l, err := auditlog.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	hostile := []string{`=HYPERLINK("http://evil/","x")`, "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "1,\"2\"\n3", "plain"}
	for i, h := range hostile {
		if _, err := l.Append(auditlog.Record{Proxy: "p", Source: "10.0.0.1", Board: "=b", HardwareID: h, Batch: "lot",
			Result: auditlog.Refused, Reason: "quota: " + h, Time: time.Unix(int64(1e9+i), 0)}); err != nil {
			t.Fatal(err)
		}
	}
	_ = l.Close()
	raw, err := batchreport.Export(path, "lot", 7, batchreport.CSV, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cr := csv.NewReader(bytes.NewReader(raw))
	cr.FieldsPerRecord = -1
	rows, err := cr.ReadAll()
	if err != nil || len(rows) != 3+len(hostile) {
		t.Fatalf("%v: %d rows\n%s", err, len(rows), raw)
	}
	for i, h := range hostile {
		row := rows[3+i]
		want := h
		if strings.ContainsAny(h[:1], "=+-@\t") {
			want = "'" + h
		}
		if row[0] != want || row[1] != "'=b" || row[6] != "quota" || row[7] != "quota: "+h {
			t.Errorf("row %d: %q, want hardware ID %q", i, row, want)
		}
	}
	js, err := batchreport.Export(path, "lot", 7, batchreport.JSON, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var r batchreport.Report
	if err := json.Unmarshal(js, &r); err != nil || len(r.Boards) != len(hostile) || r.Boards[0].HardwareID != hostile[0] {
		t.Fatalf("json: %v %+v", err, r.Boards)
	}
}

// TestParse: both formats give back the header they were written with;
// anything else is ErrMalformed.
func TestParse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "factory.jsonl")
	l, err := auditlog.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"a", "b", "a"} {
		if _, err := l.Append(auditlog.Record{Proxy: "p", Source: "s", Serial: "00000000a" + b, Batch: "lot", Result: auditlog.Enrolled}); err != nil {
			t.Fatal(err)
		}
	}
	seq, head := l.Head()
	_ = l.Close()
	now := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	for _, f := range []batchreport.Format{batchreport.CSV, batchreport.JSON} {
		raw, err := batchreport.Export(path, "lot", 9, f, now)
		if err != nil {
			t.Fatal(err)
		}
		r, err := batchreport.Parse(raw)
		if err != nil || r.Batch != "lot" || r.ManifestSize != 9 || !r.ExportedAt.Equal(now) || r.Record != (batchreport.Head{Entries: seq, Hash: head}) {
			t.Fatalf("%s: %+v %v", f, r, err)
		}
	}
	for _, bad := range []string{"", "{}", `{"version":"other"}`, "a,b\n1,2\n", "version,batch,manifest_size,exported_at,record_entries,record_head\nprov-batch-report/1,lot,x,y,z,h\n"} {
		if _, err := batchreport.Parse([]byte(bad)); !errors.Is(err, batchreport.ErrMalformed) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// FuzzParse: Parse reads a report before its signer's chain is checked, so
// it must take any bytes without panicking, and accept only a header of
// this version.
func FuzzParse(f *testing.F) {
	f.Add([]byte("version,batch,manifest_size,exported_at,record_entries,record_head\nprov-batch-report/1,lot,3,2026-11-30T06:00:00Z,7,ab\n"))
	f.Add([]byte(`{"version":"prov-batch-report/1","batch":"lot","manifestSize":3,"exportedAt":"2026-11-30T06:00:00Z","record":{"entries":7,"hash":"ab"},"boards":[]}`))
	f.Add([]byte("\"unterminated\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := batchreport.Parse(data)
		if err == nil && r.Version != batchreport.Version {
			t.Fatalf("accepted version %q", r.Version)
		}
		if err != nil && !errors.Is(err, batchreport.ErrMalformed) {
			t.Fatalf("an error that is not ErrMalformed: %v", err)
		}
	})
}
