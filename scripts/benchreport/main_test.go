package main

import (
	"os"
	"strings"
	"testing"
)

// testdata/bench.txt is `go test -bench` output of a full run (the one in
// BENCHMARKS.md), with a log line after each result.
func load(t *testing.T) map[string]result {
	t.Helper()
	f, err := os.Open("testdata/bench.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	return parse(f)
}

func TestTableFromBenchmarkOutput(t *testing.T) {
	res := load(t)
	if _, ok := res["BenchmarkStore"]; !ok {
		t.Fatalf("the GOMAXPROCS suffix was not cut: %v", res)
	}
	if got := res["BenchmarkEnroll/enroll/c=16"]["ops/s"]; got != 285.9 {
		t.Fatalf("enroll c=16 ops/s %v", got)
	}
	rows, err := table(res)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{ // what -> measured, met
		"image build+sign vs mksquashfs+sign":                                                                             {"19027/s", "yes"},
		"enrollment end to end, concurrency 16":                                                                           {"286/s, p50 54.4 p99 94.8 ms, CPU 5.4 ms each", "**no**"},
		"store of 1000000 in-service devices: bytes per device":                                                           {"1379 B", "yes"},
		"fetch latency of another device meanwhile":                                                                       {"p50 0.35 p99 25.78 ms", "**no**"},
		"core start with the full store":                                                                                  {"0.01 s", "yes"},
		"enrollment end to end, concurrency 16, core on PostgreSQL":                                                       {"87/s, p50 177.8 p99 326.4 ms", "**no**"},
		"fetches, keep-alive (8 clients), PostgreSQL behind 1 replica(s)":                                                 {"4146/s, p50 1.33 p99 7.07 ms", "**no**"},
		"group change of 100000 members across 3 replicas on PostgreSQL, to every notification acknowledged by Mosquitto": {"3988 devices/s", "**no**"},
		"store per device after a year of renewals (1.5 a day), bbolt: pruned to 30 days daily":                           {"21.0 KB file", "n/a"},
	}
	if len(rows) != 28 {
		t.Errorf("%d rows, want 28", len(rows))
	}
	for _, r := range rows {
		if w, ok := want[r.what]; ok {
			if r.measured != w[0] || r.met != w[1] {
				t.Errorf("%s: measured %q met %q, want %q %q", r.what, r.measured, r.met, w[0], w[1])
			}
			delete(want, r.what)
		}
	}
	for what := range want {
		t.Errorf("no row %q", what)
	}
	text := tableText(rows)
	if !strings.HasPrefix(text, "| benchmark | measured |") || strings.Count(text, "\n") != 30 {
		t.Errorf("table text:\n%s", text)
	}
}

// A benchmark that did not report (skipped, failed, renamed a metric) is
// an error naming it, never a row of zeros.
func TestMissingResultsAreNamed(t *testing.T) {
	res := load(t)
	delete(res, "BenchmarkStore")
	delete(res["BenchmarkFootprint"], "peak-RSS-MiB")
	_, err := table(res)
	if err == nil || !strings.Contains(err.Error(), "BenchmarkStore") || !strings.Contains(err.Error(), "BenchmarkFootprint peak-RSS-MiB") {
		t.Fatalf("err = %v", err)
	}
}
