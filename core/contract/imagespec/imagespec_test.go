package imagespec_test

import (
	"errors"
	"strings"
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

// A length is stated in the unit it is counted in, characters, with the
// limit; a bad character by its position in characters.
func TestValueLengths(t *testing.T) {
	deva := strings.Repeat("\u0967", 50) // 50 characters, 150 bytes
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"MQTT ID of 50 Devanagari digits", imagespec.CheckMQTTID("mqttGroupId", deva), "character 1 is not one of"},
		{"MQTT ID too long", imagespec.CheckMQTTID("mqttGroupId", strings.Repeat("a", 129)), "129 characters, want 1 to 128"},
		{"empty MQTT ID", imagespec.CheckMQTTID("mqttGroupId", ""), "0 characters, want 1 to 128"},
		{"MQTT ID with a Devanagari digit", imagespec.CheckMQTTID("mqttGroupId", "line-\u0967"), "character 6 is not one of"},
		{"hostname of 30 Devanagari digits", imagespec.CheckHostname(deva[:90]), "character 1 is not one of"},
		{"hostname too long", imagespec.CheckHostname(strings.Repeat("a", 64)), "64 characters, want 1 to 63"},
		{"hostname of 64 Devanagari digits", imagespec.CheckHostname(strings.Repeat("\u0967", 64)), "64 characters, want 1 to 63"},
	} {
		if !errors.Is(tc.err, imagespec.ErrBadValue) || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", tc.name, tc.err, tc.want)
		}
	}
}
