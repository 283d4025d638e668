package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/cli"
)

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := cli.Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestAudit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "factory.jsonl")
	l, err := auditlog.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []auditlog.Record{
		{Proxy: "p", Source: "10.1.0.5", Board: "rpi4", Serial: "6fd5ce8f6a", CertSerial: "123", Result: auditlog.Enrolled},
		{Proxy: "p", Source: "10.9.9.9", Result: auditlog.Refused, Reason: "network: 10.9.9.9 is not on an allowed factory network"},
	} {
		if _, err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	_ = l.Close()

	code, out, errs := run("audit", "verify", "--log", path)
	if code != cli.ExitOK || !strings.Contains(out, "2 records, chain intact") {
		t.Fatalf("verify: %d %s%s", code, out, errs)
	}
	code, out, _ = run("audit", "list", "--log", path)
	if code != cli.ExitOK || !strings.Contains(out, "6fd5ce8f6a") || !strings.Contains(out, "not on an allowed factory network") {
		t.Fatalf("list: %d\n%s", code, out)
	}
	code, out, _ = run("audit", "list", "--log", path, "--json")
	if code != cli.ExitOK || strings.Count(out, "\n") != 2 {
		t.Fatalf("list --json: %d\n%s", code, out)
	}

	raw, _ := os.ReadFile(path)
	if err := os.WriteFile(path, bytes.Replace(raw, []byte(`"refused"`), []byte(`"enrolled"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs = run("audit", "verify", "--log", path)
	if code != cli.ExitBroken || !strings.Contains(errs, "line 2") {
		t.Fatalf("verify of a tampered record: %d %s", code, errs)
	}
	if code, _, errs := run("audit", "verify", "--log", path+".missing"); code != cli.ExitBroken || !strings.Contains(errs, "no such file") {
		t.Fatalf("verify of a missing record: %d %s", code, errs)
	}
	if code, _, errs := run("audit", "verify"); code != cli.ExitUsage || !strings.Contains(errs, "--log is required") {
		t.Fatalf("no --log: %d %s", code, errs)
	}
	if code, _, _ := run("frob"); code != cli.ExitUsage {
		t.Fatal("unknown command accepted")
	}
}
