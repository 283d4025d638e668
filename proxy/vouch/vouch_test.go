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
		{"csv with endorsement keys", "b.csv", "board,hardwareId,ekSha256\nrpi4,10000000abcdef12," + strings.Repeat("AB", 32) + "\nbbb,1813BBBK0123,\n"},
		{"json with endorsement keys", "b.json", `[{"board":"rpi4","hardwareId":"10000000abcdef12","ekSha256":"` + strings.Repeat("ab", 32) + `"},{"board":"bbb","hardwareId":"1813BBBK0123"}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := readManifest(manifest(t, tc.file, tc.text))
			if err != nil {
				t.Fatal(err)
			}
			ekRPi, okRPi := ids[id(t, "rpi4", "10000000abcdef12").Key()]
			ekBBB, okBBB := ids[id(t, "bbb", "1813BBBK0123").Key()]
			if len(ids) != 2 || !okRPi || !okBBB || ekBBB != "" {
				t.Fatalf("read %v", ids)
			}
			if withEK := strings.Contains(tc.name, "endorsement"); withEK != (ekRPi == strings.Repeat("ab", 32)) {
				t.Fatalf("the Pi's EK hash %q (listed: %t)", ekRPi, withEK)
			}
		})
	}
}

func TestManifestErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ name, file, text, want string }{
		{"unknown board", "b.csv", "rpi4,10000000abcdef12\nrpi5,10000000abcdef13\n", "b.csv:2"},
		{"bad hardware id", "b.csv", "rpi4,10000000abcdef12\nrpi4,not-hex\n", "b.csv:2"},
		{"four fields", "b.csv", "rpi4,10000000abcdef12,,extra\n", "want board,hardwareId"},
		{"bad ekSha256", "b.csv", "rpi4,10000000abcdef12\nrpi4,10000000abcdef13,abcd\n", "b.csv:2: ekSha256"},
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
		{"attestation sometimes", Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{{Name: "a", Manifest: m, Attestation: "sometimes"}}}, "batches[0].attestation"},
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

func TestBatchManifestAndWindow(t *testing.T) {
	m := manifest(t, "b.csv", "rpi4,10000000000000a1\nrpi4,10000000000000a2\nrpi4,10000000000000a3\n")
	p, err := Load(Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{
		{Name: "b1", Manifest: m, Group: "line-3", NotBefore: t0, NotAfter: t0.Add(8 * time.Hour), Quota: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	a1 := id(t, "rpi4", "10000000000000a1")
	if _, err := p.Admit(id(t, "rpi4", "10000000000000ff"), t0.Add(time.Hour)); rule(t, err) != "manifest" {
		t.Fatalf("unlisted ID: %v", err)
	}
	if _, err := p.Admit(a1, t0.Add(-time.Second)); rule(t, err) != "window" {
		t.Fatalf("before the window: %v", err)
	}
	if _, err := p.Admit(a1, t0.Add(8*time.Hour)); rule(t, err) != "window" {
		t.Fatalf("at notAfter: %v", err)
	}
	ad, err := p.Admit(a1, t0.Add(time.Hour))
	if err != nil || ad.Group() != "line-3" || ad.Batch.Name != "b1" || ad.Batch.Quota != 2 {
		t.Fatalf("listed, in the window: %+v %v", ad, err)
	}
	// The quota is core's: the manifest's size unless configured.
	p, err = Load(Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{{Name: "b1", Manifest: m}}})
	if err != nil {
		t.Fatal(err)
	}
	if ad, err := p.Admit(a1, t0); err != nil || ad.Batch.Quota != 3 {
		t.Fatalf("default quota: %+v %v, want 3", ad, err)
	}
}

// A board must attest when its batch requires it or its manifest lists its
// TPM's endorsement key; the admission carries the listed key.
func TestAttestationPolicy(t *testing.T) {
	ek := strings.Repeat("0f", 32)
	loose := manifest(t, "loose.csv", "rpi4,10000000000000a1\nrpi4,10000000000000a2,"+ek+"\n")
	strict := manifest(t, "strict.csv", "rpi4,10000000000000b1\n")
	p, err := Load(Config{Networks: []string{"10.0.0.0/8"}, Batches: []BatchConfig{
		{Name: "loose", Manifest: loose}, {Name: "strict", Manifest: strict, Attestation: AttestationRequired},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		hw       string
		required bool
		ek       string
	}{{"10000000000000a1", false, ""}, {"10000000000000a2", true, ek}, {"10000000000000b1", true, ""}} {
		ad, err := p.Admit(id(t, "rpi4", tc.hw), t0)
		if err != nil || ad.AttestationRequired() != tc.required || ad.EK != tc.ek {
			t.Errorf("%s: %+v %v; want required %t, EK %q", tc.hw, ad, err, tc.required, tc.ek)
		}
	}
}

// Core's refusals of an admission reach the board as the rule they name;
// anything else is not a refusal (the proxy answers it as core's failure).
func TestCoreRefusal(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&coreapi.StatusError{Status: 409, Body: coreapi.Error{Code: coreapi.CodeAdmissionQuota, Message: "batch b1 has used its quota of 2 devices"}}, "quota"},
		{&coreapi.StatusError{Status: 409, Body: coreapi.Error{Code: coreapi.CodeAdmissionReenrollment, Message: "policy deny"}}, "reenrollment"},
		{&coreapi.StatusError{Status: 409, Body: coreapi.Error{Code: coreapi.CodeAdmissionInProgress, Message: "another key"}}, "reenrollment"},
		{&coreapi.StatusError{Status: 409, Body: coreapi.Error{Code: coreapi.CodeSerialCollision}}, ""},
		{&coreapi.StatusError{Status: 503, Body: coreapi.Error{Code: coreapi.CodeUnavailable}}, ""},
		{errors.New("connection refused"), ""},
		{nil, ""},
	} {
		r := CoreRefusal(tc.err)
		got := ""
		if r != nil {
			got = string(r.Rule)
		}
		if got != tc.want {
			t.Errorf("%v: rule %q, want %q", tc.err, got, tc.want)
		}
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
