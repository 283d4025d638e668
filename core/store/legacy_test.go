package store

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/fleetprov/prov/core/contract/hwid"
)

// A store written before records were compressed (plain JSON values) is
// read as it is, and a damaged record is an error naming it, never data.
func TestPlainJSONRecordsAndDamagedOnes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	s, v := openWithOne(t, path, map[string]string{"/etc/prov/data/a": "1"})
	serial := v.Serial
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Rewrite every record as plain JSON, as the first stores held them.
	rewrite(t, path, func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketDevices, bucketGroups, bucketAudit} {
			b := tx.Bucket(name)
			plain := map[string][]byte{}
			if err := b.ForEach(func(k, stored []byte) error {
				var m map[string]any
				if err := decode(stored, &m); err != nil {
					return err
				}
				raw, err := json.Marshal(m)
				plain[string(k)] = raw
				return err
			}); err != nil {
				return err
			}
			for k, raw := range plain {
				if err := b.Put([]byte(k), raw); err != nil {
					return err
				}
			}
		}
		return nil
	})
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Device(serial)
	if err != nil || got.Immutable.Hostname != "h" || got.GroupData["/etc/prov/data/a"] != "1" {
		t.Fatalf("plain record: %+v %v", got, err)
	}
	if ev, err := s.Audit("device/"+serial, 0, 10); err != nil || len(ev) != 1 || ev[0].Action != "register" {
		t.Fatalf("plain audit: %+v %v", ev, err)
	}
	// Writes after that are compressed, and both kinds live side by side.
	if _, err := s.SetDeviceData(serial, got.Generation(), Change{Set: map[string]string{"/etc/prov/data/b": "2"}}, "admin", func(*View) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Audit("device/"+serial, 0, 10); err != nil || len(ev) != 2 {
		t.Fatalf("mixed audit: %+v %v", ev, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage the device record on disk.
	rewrite(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		stored := append([]byte(nil), b.Get([]byte(serial))...)
		stored[len(stored)/2] ^= 0x10
		return b.Put([]byte(serial), stored)
	})
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	_, err = s.Device(serial)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), serial) {
		t.Fatalf("damaged record: %v", err)
	}
}

// openWithOne opens a new store at path with the group "default" holding
// data and one device registered in it.
func openWithOne(t *testing.T, path string, data map[string]string) (*Bolt, *View) {
	t.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EnsureGroup("default", data, "config"); err != nil {
		t.Fatal(err)
	}
	id, err := hwid.Parse("rpi4", "10000000abcdef12")
	if err != nil {
		t.Fatal(err)
	}
	v, _, err := s.Register(Registration{ID: id, Group: "default", Actor: "spiffe://fleet.test/proxy/p1", Immutable: Immutable{Hostname: "h", MQTTClientID: "c", MQTTGroupID: "g"}})
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

// rewrite changes a closed store's file directly.
func rewrite(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// A record made before core pinned keys (no keysPinned, nothing issued)
// has the key of the first certificate it is seen with pinned, once; a
// record made since pins from the start.
func TestPinFirstKeyOfLegacyRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	s, v := openWithOne(t, path, nil)
	if !v.PinsKeys() {
		t.Fatal("a new record does not pin keys")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// As an older core wrote it: no keysPinned.
	legacy := v.Device
	legacy.KeysPinned = false
	rewrite(t, path, func(tx *bolt.Tx) error {
		raw, err := json.Marshal(&legacy)
		if err != nil {
			return err
		}
		if strings.Contains(string(raw), "keysPinned") {
			t.Errorf("a legacy record written with keysPinned: %s", raw)
		}
		return tx.Bucket(bucketDevices).Put([]byte(v.Serial), raw)
	})
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	got, err := s.Device(v.Serial)
	if err != nil || got.PinsKeys() {
		t.Fatalf("legacy record: pins keys %v (%v)", got.PinsKeys(), err)
	}
	pinned, first, err := s.PinFirstKey(v.Serial, Issued{Serial: "1", KeySHA256: "k1", IssuedBy: "core: first use"})
	if err != nil || !first || !pinned.PinsKeys() || !pinned.KeyRecorded("k1") {
		t.Fatalf("first key: %+v %v %v", pinned, first, err)
	}
	again, first, err := s.PinFirstKey(v.Serial, Issued{Serial: "2", KeySHA256: "k2"})
	if err != nil || first || again.KeyRecorded("k2") || !again.KeyRecorded("k1") {
		t.Fatalf("second key: %+v %v %v", again.Issued, first, err)
	}
	if ev, _ := s.Audit("device/"+v.Serial, 0, 10); ev[len(ev)-1].Action != "key pinned on first use" {
		t.Fatalf("audit: %+v", ev)
	}
}
