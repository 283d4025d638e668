package imagespec_test

import (
	"errors"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
)

func TestCheckDir(t *testing.T) {
	r := imagespec.Rules{AllowedPrefixes: []string{imagespec.DataDir, "/etc/app/conf/"}}
	for _, d := range []string{"/", "/etc", "/etc/prov", "/etc/prov/data", "/etc/prov/data/sub", "/etc/extension-release.d", "/etc/app", "/etc/app/conf", "/etc/app/conf/x"} {
		if err := r.CheckDir(d); err != nil {
			t.Errorf("CheckDir(%q): %v", d, err)
		}
	}
	for _, d := range []string{"/var", "/etc/other", "/etc/app/other", "/etc/prov/other", "/etc/extension-release.d/x", "/etc/prov/data/.hidden", "/etc/prov/data/../x"} {
		if err := r.CheckDir(d); !errors.Is(err, imagespec.ErrBadPath) {
			t.Errorf("CheckDir(%q): %v", d, err)
		}
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	m := imagespec.ImageMetadata{Format: imagespec.FormatVersion, Serial: "1a2b3c4d5e", Generation: 7, IssuedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	b, err := imagespec.MarshalMetadata(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := imagespec.ParseMetadata(b)
	if err != nil || got != m {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range []string{"", "{", `{"format":2,"serial":"1a2b3c4d5e"}`, `{"format":1,"x":1}`, string(b) + "{}"} {
		if _, err := imagespec.ParseMetadata([]byte(bad)); !errors.Is(err, imagespec.ErrBadValue) {
			t.Errorf("ParseMetadata(%q): %v", bad, err)
		}
	}
}

func TestValues(t *testing.T) {
	for _, h := range []string{"", "-a", "a-", "A", "a.b", "a_b", string(make([]byte, 64))} {
		if imagespec.CheckHostname(h) == nil {
			t.Errorf("hostname %q accepted", h)
		}
	}
	for _, id := range []string{"", "a b", "a/b", "a#", "a+", "é"} {
		if imagespec.CheckMQTTID("id", id) == nil {
			t.Errorf("MQTT id %q accepted", id)
		}
	}
	if imagespec.CheckHostname("rpi4-1a2b3c4d5e") != nil || imagespec.CheckMQTTID("id", "line-a:1_b.c") != nil {
		t.Error("good values refused")
	}
}
