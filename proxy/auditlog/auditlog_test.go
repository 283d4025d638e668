package auditlog_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/fleetprov/prov/proxy/auditlog"
)

func write(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "factory.jsonl")
	l, err := auditlog.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := l.Append(auditlog.Record{Proxy: "factory1", Source: "10.1.0.5", Board: "rpi4", Serial: "1a2b3c4d5e",
			Result: []string{auditlog.Enrolled, auditlog.Refused}[i%2], Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestChainVerifiesAndReopens(t *testing.T) {
	path := write(t, 5)
	n, head, err := auditlog.Verify(path)
	if err != nil || n != 5 || len(head) != 64 {
		t.Fatalf("Verify: %d %s %v", n, head, err)
	}
	var seen []uint64
	l, err := auditlog.Open(path, func(r auditlog.Record) { seen = append(seen, r.Seq) })
	if err != nil || len(seen) != 5 {
		t.Fatalf("reopen: %v %v", seen, err)
	}
	r, err := l.Append(auditlog.Record{Proxy: "factory1", Result: auditlog.Failed})
	if err != nil || r.Seq != 6 || r.Prev != head {
		t.Fatalf("append after reopen: %+v %v", r, err)
	}
	_ = l.Close()
	if n, _, err := auditlog.Verify(path); err != nil || n != 6 {
		t.Fatalf("after append: %d %v", n, err)
	}
}

func TestTamperingIsDetected(t *testing.T) {
	for name, tamper := range map[string]func([]string) []string{
		"a field changed":    func(l []string) []string { l[1] = strings.Replace(l[1], `"refused"`, `"enrolled"`, 1); return l },
		"a line removed":     func(l []string) []string { return append(l[:2], l[3:]...) },
		"two lines swapped":  func(l []string) []string { l[1], l[2] = l[2], l[1]; return l },
		"a line duplicated":  func(l []string) []string { return append(l[:3], l[2:]...) },
		"a hash recomputed?": func(l []string) []string { l[1] = strings.Replace(l[1], `"10.1.0.5"`, `"10.9.9.9"`, 1); return l },
		"garbage inserted":   func(l []string) []string { return append(l[:1], append([]string{"{}"}, l[1:]...)...) },
	} {
		t.Run(name, func(t *testing.T) {
			path := write(t, 5)
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
			if err := os.WriteFile(path, []byte(strings.Join(tamper(lines), "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, _, err := auditlog.Verify(path); !errors.Is(err, auditlog.ErrBroken) {
				t.Fatalf("Verify: %v", err)
			}
			if _, err := auditlog.Open(path, nil); !errors.Is(err, auditlog.ErrBroken) {
				t.Fatalf("Open: %v", err)
			}
		})
	}
}

// A write torn by a crash (never acknowledged) is cut off at open; Verify
// reports it.
func TestTornLastLine(t *testing.T) {
	path := write(t, 3)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"seq":4,"time":"2026`)
	_ = f.Close()
	if _, _, err := auditlog.Verify(path); !errors.Is(err, auditlog.ErrBroken) {
		t.Fatalf("Verify of a torn tail: %v", err)
	}
	l, err := auditlog.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := l.Append(auditlog.Record{Result: auditlog.Failed}); err != nil || r.Seq != 4 {
		t.Fatalf("append after the cut: %+v %v", r, err)
	}
	_ = l.Close()
	raw, _ := os.ReadFile(path)
	if n, _, err := auditlog.Verify(path); err != nil || n != 4 || bytes.Contains(raw, []byte(`"time":"2026`+"\n")) {
		t.Fatalf("after the cut: %d %v", n, err)
	}
}

// Concurrent appends share fsyncs but each returns only once its own record
// is in the file, in one unbroken chain.
func TestConcurrentAppendsFormOneChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "factory.jsonl")
	l, err := auditlog.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 16, 50
	seqs := make(chan uint64, writers*each)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				r, err := l.Append(auditlog.Record{Proxy: "factory1", Source: fmt.Sprintf("10.1.0.%d", w), Result: auditlog.Enrolled, Reason: strconv.Itoa(i)})
				if err != nil {
					t.Error(err)
					return
				}
				seqs <- r.Seq
			}
		})
	}
	wg.Wait()
	close(seqs)
	got := map[uint64]bool{}
	for s := range seqs {
		if got[s] {
			t.Fatalf("seq %d returned twice", s)
		}
		got[s] = true
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	n, _, err := auditlog.Verify(path)
	if err != nil || n != writers*each || len(got) != writers*each {
		t.Fatalf("Verify: %d records, %d acknowledged, %v", n, len(got), err)
	}
}

// After a failed write the log refuses every later append rather than
// chain a record to one that may not be on disk.
func TestFailedWriteIsSticky(t *testing.T) {
	path := filepath.Join(t.TempDir(), "factory.jsonl")
	l, err := auditlog.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(auditlog.Record{Proxy: "factory1", Result: auditlog.Enrolled}); err != nil {
		t.Fatal(err)
	}
	_ = l.Close() // the file goes away under the log, as on a failing disk
	for i := range 2 {
		if _, err := l.Append(auditlog.Record{Proxy: "factory1", Result: auditlog.Enrolled}); err == nil || !strings.Contains(err.Error(), "restart the proxy") {
			t.Fatalf("append %d after a failed write: %v", i, err)
		}
	}
	if n, _, err := auditlog.Verify(path); err != nil || n != 1 {
		t.Fatalf("Verify: %d %v", n, err)
	}
}
