package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

func sampleDevice() *Device {
	now := time.Date(2026, 11, 28, 12, 56, 22, 0, time.UTC)
	return &Device{Serial: "b1048a9dd1", Board: "rpi4", HardwareID: "1000000000000000", Group: "default",
		Immutable: Immutable{Hostname: "rpi4-b1048a9dd1", MachineID: "a2c73a4598732db01e736998932876a7", MQTTClientID: "b1048a9dd1", MQTTGroupID: "fleet"},
		Version:   1, VersionAt: now, Status: Active,
		Certificates: []Certificate{{Fingerprint: "474c8e584fbce2199066dccea2e369964aeb5e5dea6688212ffe47bad96a89ce", Serial: "141308081127132787556809908222375831736", NotAfter: now.Add(24 * time.Hour), FirstSeen: now}},
		Issued:       []Issued{{Serial: "141308081127132787556809908222375831736", KeySHA256: "6a4ef24cb01aa0e97da4186c067128b828532db703db8872fa736a0cc0b363b1", NotBefore: now, NotAfter: now.Add(24 * time.Hour), IssuedBy: "spiffe://fleet.test/proxy/bench"}},
		RegisteredBy: "spiffe://fleet.test/proxy/bench", CreatedAt: now, UpdatedAt: now}
}

// BenchmarkCodec: the cost of a compressed record, each way.
func BenchmarkCodec(b *testing.B) {
	d := sampleDevice()
	raw, err := encode(d)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := encode(d); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(raw)), "bytes")
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var out Device
			if err := decode(raw, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The dictionary is part of the on-disk format: records written with it
// must stay readable, so it may never change (a new one needs a new ID).
func TestDictionaryIsPinned(t *testing.T) {
	sum := sha256.Sum256([]byte(dictV1))
	if got := hex.EncodeToString(sum[:]); got != pinnedDictV1 {
		t.Fatalf("dictV1 changed (sha256 %s, pinned %s): existing stores would not read; add a new dictionary ID instead", got, pinnedDictV1)
	}
}

func TestCodecRoundTripAndLegacy(t *testing.T) {
	d := sampleDevice()
	stored, err := encode(d)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) >= len(plain)/2 {
		t.Errorf("stored %d bytes for %d of JSON: the dictionary does not work", len(stored), len(plain))
	}
	for name, raw := range map[string][]byte{"compressed": stored, "plain JSON (older stores)": plain} {
		var got Device
		if err := decode(raw, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(&got, d) {
			t.Fatalf("%s: got %+v, want %+v", name, got, d)
		}
	}
}

func TestCodecRefusesCorruptRecords(t *testing.T) {
	stored, err := encode(sampleDevice())
	if err != nil {
		t.Fatal(err)
	}
	truncated := stored[:len(stored)-10]
	flipped := bytes.Clone(stored)
	flipped[len(flipped)/2] ^= 0x01 // caught by the frame's checksum
	otherDict := must(zstd.NewWriter(nil, zstd.WithEncoderDictRaw(7, []byte("another dictionary entirely")))).EncodeAll([]byte(`{"serial":"x"}`), nil)
	// A frame that says it holds more than maxRecord.
	bomb := must(zstd.NewWriter(nil)).EncodeAll(bytes.Repeat([]byte{' '}, maxRecord+1), nil)
	for name, raw := range map[string][]byte{
		"empty": nil, "unknown first byte": []byte("\x02abc"), "truncated": truncated,
		"corrupted": flipped, "unknown dictionary": otherDict, "over the size limit": bomb,
	} {
		var d Device
		err := decode(raw, &d)
		if err == nil {
			t.Errorf("%s: decoded without an error", name)
			continue
		}
		if name == "unknown first byte" && !errors.Is(err, errUnknownEncoding) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

const pinnedDictV1 = "81248ae162d2690d7326ab14495e6485d5b8a5c3f0aa5ed69bf49c86989dc483"

// No single flipped bit anywhere in a record decodes to different data.
func TestCodecDetectsEveryBitFlip(t *testing.T) {
	want := sampleDevice()
	stored, err := encode(want)
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(stored) * 8 {
		c := bytes.Clone(stored)
		c[i/8] ^= 1 << (i % 8)
		var got Device
		if err := decode(c, &got); err == nil && !reflect.DeepEqual(&got, want) {
			t.Fatalf("bit %d flipped: decoded to different data without an error", i)
		}
	}
}
