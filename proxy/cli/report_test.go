package cli_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/batchreport"
	"github.com/fleetprov/prov/proxy/cli"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// The shared step-ca behind the real proxy of TestBatchReport.
func TestMain(m *testing.M) { os.Exit(catest.Main(m)) }

// enroll posts an enrollment as a board does (trusting only the root,
// wanting a proxy) and returns the status code.
func enroll(t *testing.T, url string, roots *pki.TrustBundle, board, hw, csr string) int {
	t.Helper()
	body, _ := json.Marshal(enrollapi.EnrollRequest{Board: board, HardwareID: hw, CSR: csr})
	cfg := pki.ClientTLSConfig(nil, roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleProxy}})
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	resp, err := hc.Post(url+enrollapi.PathEnroll, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func newCSR(t *testing.T) string {
	_, csr := catest.NewCSR(t)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw}))
}

// TestBatchReport: a real proxy enrolls a batch; its report equals `audit
// list` for the batch, verifies with prov-proxy and with OpenSSL, and a
// tampered report, a report signed by another identity and a record that
// lost its reported head are refused.
func TestBatchReport(t *testing.T) {
	openssl := testenv.Tool(t, "openssl", "install it: apt-get install -y openssl")
	dir := t.TempDir()
	manifest := filepath.Join(dir, "lot7.csv")
	if err := os.WriteFile(manifest, []byte("board,hardwareId\nrpi4,10000000000000b1\nrpi4,10000000000000b2\nbbb,1813BBBK0071\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	core := coretest.Start(t, "")
	p := proxytest.Start(t, core, fmt.Sprintf("networks: [\"127.0.0.0/8\"]\nbatches:\n  - {name: lot7, manifest: %q, quota: 2}\n", manifest))
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	b1 := newCSR(t)
	for _, a := range []struct {
		board, hw, csr string
		code           int
	}{
		{"rpi4", "10000000000000b1", b1, 200},
		{"rpi4", "10000000000000b1", b1, 200}, // a retry with the same key: a second attempt, one board
		{"rpi4", "10000000000000b2", newCSR(t), 200},
		{"bbb", "1813BBBK0071", newCSR(t), 403}, // quota 2
		{"bbb", "1813BBBK0071", newCSR(t), 403},
		{"rpi4", "10000000000000ff", newCSR(t), 403}, // in no manifest: no batch
	} {
		if code := enroll(t, p.URL, roots, a.board, a.hw, a.csr); code != a.code {
			t.Fatalf("%s: %d, want %d", a.hw, code, a.code)
		}
	}

	out := filepath.Join(dir, "lot7.json")
	if code, o, e := run("audit", "report", "--config", p.Config, "--batch", "lot7", "--format", "json", "--out", out); code != cli.ExitOK {
		t.Fatalf("report: %d %s%s", code, o, e)
	}
	outCSV := filepath.Join(dir, "lot7.csv.report")
	if code, o, e := run("audit", "report", "--config", p.Config, "--batch", "lot7", "--format", "csv", "--out", outCSV); code != cli.ExitOK {
		t.Fatalf("report csv: %d %s%s", code, o, e)
	}
	data, _ := os.ReadFile(out)
	var rep batchreport.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}

	// The report is `audit list` for the batch: one board per serial, its
	// last attempt, and as many attempts as the list has lines for it.
	code, listed, _ := run("audit", "list", "--log", p.Record, "--json", "--batch", "lot7")
	if code != cli.ExitOK {
		t.Fatalf("list: %d", code)
	}
	var want []batchreport.Board
	at := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(listed), "\n") {
		var r auditlog.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		b := batchreport.Board{HardwareID: r.HardwareID, Board: r.Board, Serial: r.Serial, CertSerial: r.CertSerial, Time: r.Time, Result: r.Result, Reason: r.Reason, Seq: r.Seq, Attempts: 1}
		if r.Result == auditlog.Refused {
			b.Rule = strings.SplitN(r.Reason, ":", 2)[0]
		}
		if i, ok := at[r.Serial]; ok {
			b.Attempts += want[i].Attempts
			want[i] = b
			continue
		}
		at[r.Serial] = len(want)
		want = append(want, b)
	}
	if len(want) != 3 || want[0].Attempts != 2 || want[0].Result != auditlog.Enrolled || want[0].CertSerial == "" ||
		want[2].Attempts != 2 || want[2].Rule != "quota" {
		t.Fatalf("audit list for the batch is not the attempts made: %+v", want)
	}
	for i := range rep.Boards { // JSON carries times in UTC as the record does
		rep.Boards[i].Time = rep.Boards[i].Time.UTC()
	}
	if !reflect.DeepEqual(rep.Boards, want) {
		t.Fatalf("report boards\n%+v\nwant (audit list)\n%+v", rep.Boards, want)
	}
	n, head, err := auditlog.Verify(p.Record)
	if err != nil || rep.Record != (batchreport.Head{Entries: n, Hash: head}) || rep.ManifestSize != 3 || rep.Batch != "lot7" {
		t.Fatalf("report header %+v %d %s, record %d %s %v", rep.Record, rep.ManifestSize, rep.Batch, n, head, err)
	}
	// The CSV holds the same boards.
	raw, _ := os.ReadFile(outCSV)
	cr := csv.NewReader(bytes.NewReader(raw))
	cr.FieldsPerRecord = -1
	rows, err := cr.ReadAll()
	if err != nil || len(rows) != 3+len(want) || rows[1][5] != head {
		t.Fatalf("csv: %v\n%s", err, raw)
	}
	for i, b := range want {
		got := rows[3+i]
		if got[0] != b.HardwareID || got[2] != b.Serial || got[3] != b.CertSerial || got[5] != b.Result || got[6] != b.Rule || got[8] != strconv.Itoa(b.Attempts) {
			t.Fatalf("csv row %d: %q, want %+v", i, got, b)
		}
	}

	root := core.RootCert()
	verify := func(report string, withLog string) (int, string) {
		args := []string{"audit", "verify-report", "--report", report, "--root", root}
		if withLog != "" {
			args = append(args, "--log", withLog)
		}
		code, o, e := run(args...)
		return code, o + e
	}
	// The command of docs/factory.md, as written there (bash for <(...)).
	opensslOK := func(report string) bool {
		bash := testenv.Tool(t, "bash", "install bash")
		o, err := exec.Command(bash, "-c", `PATH="$(dirname "$1"):$PATH" && openssl dgst -sha256 -verify <(openssl x509 -pubkey -noout -in "$2.pem") -signature "$2.sig" "$2"`, //nolint:gosec // test
			"-", openssl, report).CombinedOutput()
		if err == nil && !strings.Contains(string(o), "Verified OK") {
			t.Fatalf("openssl dgst: %s", o)
		}
		return err == nil
	}
	for _, r := range []string{out, outCSV} {
		if code, o := verify(r, p.Record); code != cli.ExitOK || !strings.Contains(o, "signed by spiffe://"+catest.TrustDomain+"/proxy/"+catest.Proxy) || !strings.Contains(o, "still holds") {
			t.Fatalf("verify-report %s: %d %s", r, code, o)
		}
		if !opensslOK(r) {
			t.Fatalf("openssl refuses the signature of %s", r)
		}
		if o, err := exec.Command(openssl, "verify", "-CAfile", root, "-untrusted", r+".pem", r+".pem").CombinedOutput(); err != nil { //nolint:gosec // test
			t.Fatalf("openssl verify of the signer's chain: %v %s", err, o)
		}
	}

	// One byte changed: both refuse.
	tampered := filepath.Join(dir, "tampered.json")
	copyReport(t, out, tampered, func(b []byte) { b[bytes.Index(b, []byte("enrolled"))] = 'E' })
	if code, o := verify(tampered, ""); code != cli.ExitBroken || !strings.Contains(o, batchreport.ErrBadSignature.Error()) {
		t.Fatalf("verify-report of a tampered report: %d %s", code, o)
	}
	if opensslOK(tampered) {
		t.Fatal("openssl accepts a tampered report")
	}

	// A record that no longer holds the head (its last entry cut).
	recRaw, _ := os.ReadFile(p.Record)
	lines := bytes.SplitAfter(bytes.TrimSuffix(recRaw, []byte("\n")), []byte("\n"))
	cut := filepath.Join(dir, "cut.jsonl")
	if err := os.WriteFile(cut, bytes.Join(lines[:len(lines)-1], nil), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, o := verify(out, cut); code != cli.ExitBroken || !strings.Contains(o, batchreport.ErrHeadMismatch.Error()) {
		t.Fatalf("verify-report against a cut record: %d %s", code, o)
	}
	// Another record, as long or longer: its entry at that position has
	// another hash.
	forged := filepath.Join(dir, "other.jsonl")
	l, err := auditlog.Open(forged, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range n + 1 {
		if _, err := l.Append(auditlog.Record{Proxy: "p", Source: "10.0.0.1", Result: auditlog.Enrolled}); err != nil {
			t.Fatal(err)
		}
	}
	_ = l.Close()
	if code, o := verify(out, forged); code != cli.ExitBroken || !strings.Contains(o, batchreport.ErrHeadMismatch.Error()) {
		t.Fatalf("verify-report against another record: %d %s", code, o)
	}
	// A record that grew since the export still holds the head.
	if code := enroll(t, p.URL, roots, "rpi4", "10000000000000b2", newCSR(t)); code != http.StatusForbidden {
		t.Fatalf("re-enrollment with a new key: %d", code)
	}
	if code, o := verify(out, p.Record); code != cli.ExitOK {
		t.Fatalf("verify-report against a longer record: %d %s", code, o)
	}

	// Signed by core's identity: a valid signature from the deployment,
	// but not by a proxy.
	c := core.CA
	other := filepath.Join(dir, "by-core.json")
	if code, o, e := run("audit", "report", "--log", p.Record, "--batch", "lot7", "--format", "json", "--out", other, "--manifest", manifest,
		"--cert", c.IdentityCert(pki.RoleCore, deployment.DefaultCoreName), "--key", c.IdentityKey(pki.RoleCore, deployment.DefaultCoreName)); code != cli.ExitOK {
		t.Fatalf("report with core's key: %d %s%s", code, o, e)
	}
	if !opensslOK(other) {
		t.Fatal("openssl refuses core's signature: the test would not show the role check")
	}
	if code, o := verify(other, ""); code != cli.ExitBroken || !strings.Contains(o, pki.ErrRoleNotAllowed.Error()) {
		t.Fatalf("verify-report of a report signed by core: %d %s", code, o)
	}
}

// copyReport copies a report, its signature and chain, changing the
// report's bytes with edit.
func copyReport(t *testing.T, from, to string, edit func([]byte)) {
	t.Helper()
	for _, ext := range []string{"", ".sig", ".pem"} {
		b, err := os.ReadFile(from + ext)
		if err != nil {
			t.Fatal(err)
		}
		if ext == "" {
			edit(b)
		}
		if err := os.WriteFile(to+ext, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
