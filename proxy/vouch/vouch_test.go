package vouch

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func manifest(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func id(t *testing.T, board, raw string) hwid.ID {
	t.Helper()
	i, err := hwid.Parse(board, raw)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func rule(t *testing.T, err error) string {
	t.Helper()
	var r *Refusal
	if err == nil {
		return ""
	}
	if !errors.As(err, &r) {
		t.Fatalf("not a refusal: %v", err)
	}
	return string(r.Rule)
}

func TestManifestFormats(t *testing.T) {
	for _, tc := range []struct{ name, file, text string }{
		{"csv with header and comments", "b.csv", "board,hardwareId\n# line 2 of the batch\nrpi4,10000000abcdef12\n\nbbb, 1813BBBK0123\n"},
		{"csv without header", "b.csv", "rpi4,10000000abcdef12\nbbb,1813BBBK0123\n"},
		{"quoted csv", "b.csv", "\"rpi4\",\"10000000abcdef12\"\r\nbbb,1813BBBK0123\r\n"},
		{"json", "b.json", `[{"board":"rpi4","hardwareId":"10000000abcdef12"},{"board":"bbb","hardwareId":"1813BBBK0123"}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := readManifest(manifest(t, tc.file, tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if len(ids) != 2 || !ids[id(t, "rpi4", "10000000abcdef12").Key()] || !ids[id(t, "bbb", "1813BBBK0123").Key()] {
				t.Fatalf("read %v", ids)
			}
		})
	}
}

func TestManifestErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ name, file, text, want string }{
		{"unknown board", "b.csv", "rpi4,10000000abcdef12\nrpi5,10000000abcdef13\n", "b.csv:2"},
		{"bad hardware id", "b.csv", "rpi4,10000000abcdef12\nrpi4,not-hex\n", "b.csv:2"},
		{"three fields", "b.csv", "rpi4,10000000abcdef12,extra\n", "want board,hardwareId"},
		{"one field", "b.csv", "rpi4\n", "want board,hardwareId"},
		{"listed twice", "b.csv", "rpi4,10000000abcdef12\nrpi4,10000000ABCDEF12\n", "listed twice"},
		{"empty", "b.csv", "board,hardwareId\n", "lists no hardware IDs"},
		{"json unknown field", "b.json", `[{"board":"rpi4","hw":"10000000abcdef12"}]`, "unknown field"},
		{"json bad entry", "b.json", `[{"board":"rpi4","hardwareId":"10000000abcdef12"},{"board":"x","hardwareId":"1"}]`, "entry 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readManifest(manifest(t, tc.file, tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
	if _, err := readManifest(filepath.Join(t.TempDir(), "missing.csv")); err == nil {
		t.Fatal("a missing manifest was accepted")
	}
}

func TestLoadRefusesBadConfig(t *testing.T) {
	m := manifest(t, "b.csv", "rpi4,10000000abcdef12\n")
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"no networks", Config{}, "vouching.networks"},
		{"bad cidr", Config{Networks: []string{"10.0.0.0/33"}}, "10.0.0.0/33"},
		{"bad policy", Config{Networks: []string{"10.0.0.0/8"}, Reenrollment: "sometimes"}, "vouching.reenrollment"},
		{"unnamed batch", Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{{Manifest: m}}}, "batches[0].name"},
		{"two batches one name", Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{{Name: "a", Manifest: m}, {Name: "a", Manifest: m}}}, "batches[1].name"},
		{"window backwards", Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{{Name: "a", Manifest: m, NotBefore: t0, NotAfter: t0}}}, "notAfter"},
		{"negative quota", Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{{Name: "a", Manifest: m, Quota: -1}}}, "quota"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Load(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestSourceNetworks(t *testing.T) {
	p, err := Load(Config{Networks: []string{"10.20.0.0/16", "fd00:fac::/48"}})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{
		"10.20.3.4": "", "::ffff:10.20.3.4": "", "fd00:fac::17": "",
		"10.21.0.1": "network", "127.0.0.1": "network", "fd00:fad::1": "network",
	} {
		if got := rule(t, p.CheckSource(netip.MustParseAddr(addr))); got != want {
			t.Errorf("%s: refused by %q, want %q", addr, got, want)
		}
	}
}

func TestBatchWindowAndQuota(t *testing.T) {
	m := manifest(t, "b.csv", "rpi4,10000000000000a1\nrpi4,10000000000000a2\nrpi4,10000000000000a3\n")
	p, err := Load(Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{
		{Name: "b1", Manifest: m, Group: "line-3", NotBefore: t0, NotAfter: t0.Add(8 * time.Hour), Quota: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	a1, a2, a3 := id(t, "rpi4", "10000000000000a1"), id(t, "rpi4", "10000000000000a2"), id(t, "rpi4", "10000000000000a3")
	if _, err := p.Admit(id(t, "rpi4", "10000000000000ff"), "x", t0.Add(time.Hour)); rule(t, err) != "manifest" {
		t.Fatalf("unlisted ID: %v", err)
	}
	if _, err := p.Admit(a1, a1.Serial(), t0.Add(-time.Second)); rule(t, err) != "window" {
		t.Fatalf("before the window: %v", err)
	}
	if _, err := p.Admit(a1, a1.Serial(), t0.Add(8*time.Hour)); rule(t, err) != "window" {
		t.Fatalf("at notAfter: %v", err)
	}
	now := t0.Add(time.Hour)
	ad1, err := p.Admit(a1, a1.Serial(), now)
	if err != nil || ad1.Group() != "line-3" {
		t.Fatalf("first: %v %v", ad1, err)
	}
	// A concurrent attempt for the same device shares its place.
	again, err := p.Admit(a1, a1.Serial(), now)
	if err != nil {
		t.Fatalf("same device twice: %v", err)
	}
	ad2, err := p.Admit(a2, a2.Serial(), now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Admit(a3, a3.Serial(), now); rule(t, err) != "quota" {
		t.Fatalf("third of a quota of two while two are in flight: %v", err)
	}
	// A failed enrollment gives its place back; a finished one keeps it.
	ad2.Done(false)
	again.Done(true)
	ad1.Done(true)
	ad1.Done(true) // idempotent
	ad3, err := p.Admit(a3, a3.Serial(), now)
	if err != nil {
		t.Fatalf("place given back: %v", err)
	}
	ad3.Done(true)
	if _, err := p.Admit(a2, a2.Serial(), now); rule(t, err) != "quota" {
		t.Fatalf("quota used: %v", err)
	}
	// A device already counted may come back (re-enrollment is its own rule).
	if ad, err := p.Admit(a1, a1.Serial(), now); err != nil {
		t.Fatalf("enrolled device again: %v", err)
	} else {
		ad.Done(true)
	}
}

func TestQuotaSurvivesRestartByReplay(t *testing.T) {
	m := manifest(t, "b.csv", "rpi4,10000000000000a1\nrpi4,10000000000000a2\n")
	p, err := Load(Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{{Name: "b1", Manifest: m, Quota: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := id(t, "rpi4", "10000000000000a1"), id(t, "rpi4", "10000000000000a2")
	p.Replay("b1", a1.Serial())
	if _, err := p.Admit(a2, a2.Serial(), t0); rule(t, err) != "quota" {
		t.Fatalf("after replay: %v", err)
	}
}

func TestRate(t *testing.T) {
	p, err := Load(Config{Networks: []string{"10.0.0.0/8"}, Rate: 1, Burst: 2})
	if err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for i := range 2 {
		if err := p.Allow(a, t0); err != nil {
			t.Fatalf("burst %d: %v", i, err)
		}
	}
	err = p.Allow(a, t0)
	var r *Refusal
	if !errors.As(err, &r) || r.Rule != "rate" || r.RetryAfter < 1 {
		t.Fatalf("over the burst: %v", err)
	}
	if err := p.Allow(b, t0); err != nil {
		t.Fatalf("another station has its own budget: %v", err)
	}
	if err := p.Allow(a, t0.Add(1100*time.Millisecond)); err != nil {
		t.Fatalf("after a second: %v", err)
	}
}

func TestReenrollmentPolicies(t *testing.T) {
	old := coreapi.IssuedCertificate{Serial: "111", KeySHA256: "k1", NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(24 * time.Hour)}
	expired := coreapi.IssuedCertificate{Serial: "100", KeySHA256: "k0", NotBefore: t0.Add(-48 * time.Hour), NotAfter: t0.Add(-24 * time.Hour)}
	stale := old
	stale.NotBefore = t0.Add(-2 * time.Hour)
	for _, tc := range []struct {
		policy Reenrollment
		issued []coreapi.IssuedCertificate
		key    string
		refuse bool
		revoke []string
	}{
		{Deny, nil, "k1", false, nil},
		{Deny, []coreapi.IssuedCertificate{old}, "k1", false, nil},  // a retry within the window
		{Deny, []coreapi.IssuedCertificate{stale}, "k1", true, nil}, // the same key, long after
		{Deny, []coreapi.IssuedCertificate{old}, "k2", true, nil},   // a reflashed card
		{SameKeyOnly, []coreapi.IssuedCertificate{stale}, "k1", false, nil},
		{SameKeyOnly, []coreapi.IssuedCertificate{old}, "k2", true, nil},
		{Allow, []coreapi.IssuedCertificate{old, expired}, "k2", false, []string{"111"}}, // expired ones need no revocation
		{Allow, []coreapi.IssuedCertificate{old}, "k1", false, nil},
	} {
		p, err := Load(Config{Networks: []string{"10.0.0.0/8"}, Reenrollment: tc.policy, RetryWindow: 15 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		revoke, err := p.Reenroll(tc.issued, tc.key, t0)
		if (err != nil) != tc.refuse || (err != nil && rule(t, err) != "reenrollment") {
			t.Errorf("%s %v key %s: %v", tc.policy, tc.issued, tc.key, err)
		}
		if strings.Join(revoke, ",") != strings.Join(tc.revoke, ",") {
			t.Errorf("%s: revokes %v, want %v", tc.policy, revoke, tc.revoke)
		}
	}
}
