package store

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fleetprov/prov/core/contract/hwid"
)

// Registration asks for a device record.
type Registration struct {
	ID        hwid.ID
	Group     string
	Immutable Immutable
	Actor     string // the proxy's identity
}

// Register creates the record of a hardware ID, or returns the existing one
// unchanged (idempotent: immutable data is never recomputed). A different
// hardware ID with the same serial is ErrCollision and changes nothing.
func (s *Bolt) Register(r Registration) (v *View, created bool, err error) {
	for range maxOptimistic {
		v, created, err = s.registerPrepared(r)
		if !errors.Is(err, errStale) {
			return v, created, err
		}
	}
	// Contended (the group keeps changing): do it all in the writer.
	return s.registerInWriter(r)
}

// registerPrepared is Register with the record prepared outside the
// writer (prepare.go); errStale when the group changed meanwhile or the
// hardware ID was registered by another call.
func (s *Bolt) registerPrepared(r Registration) (*View, bool, error) {
	var g Group
	var groupBase []byte
	var existing string
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if existing, err = registrationState(tx, r, &g); err != nil || existing != "" {
			return err
		}
		groupBase = bytes.Clone(tx.Bucket(bucketGroups).Get([]byte(r.Group)))
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	if existing != "" {
		v, err := s.Device(existing)
		return v, false, err
	}
	d, ev := s.newDevice(r, &g)
	still := func(tx *bolt.Tx) error {
		if tx.Bucket(bucketHWIDs).Get([]byte(r.ID.Key())) != nil || !bytes.Equal(tx.Bucket(bucketGroups).Get([]byte(r.Group)), groupBase) {
			return errStale
		}
		if tx.Bucket(bucketDevices).Get([]byte(d.Serial)) != nil {
			return fmt.Errorf("%w: serial %s (hardware ID %s)", ErrCollision, d.Serial, r.ID.Key())
		}
		return nil
	}
	indexes := func(tx *bolt.Tx) error { return putIndexes(tx, r, d.Serial) }
	if err := s.commitPrepared("register", d.Serial, d, ev, still, indexes); err != nil {
		return nil, false, err
	}
	return NewView(d, &g), true, nil
}

// registerInWriter is Register done entirely inside one write
// transaction, for when the prepared way keeps going stale.
func (s *Bolt) registerInWriter(r Registration) (*View, bool, error) {
	var v *View
	created := false
	err := s.updateDevice("register", r.ID.Serial(), func(tx *bolt.Tx) (*Device, error) {
		var g Group
		existing, err := registrationState(tx, r, &g)
		if err != nil || existing != "" {
			// Not written here: nothing to cache.
			v, err = viewOr(tx, existing, err)
			return nil, err
		}
		d, ev := s.newDevice(r, &g)
		if err := putRecord(tx.Bucket(bucketDevices), d.Serial, d); err != nil {
			return nil, err
		}
		if err := putIndexes(tx, r, d.Serial); err != nil {
			return nil, err
		}
		if err := audit(tx, *ev); err != nil {
			return nil, err
		}
		v, created = NewView(d, &g), true
		return d, nil
	})
	if err != nil {
		return nil, false, err
	}
	return v, created, nil
}

// registrationState reads what a registration depends on: the serial the
// hardware ID already has (if any), else its group into g; a serial taken
// by another hardware ID is ErrCollision.
func registrationState(tx *bolt.Tx, r Registration, g *Group) (existing string, err error) {
	if e := tx.Bucket(bucketHWIDs).Get([]byte(r.ID.Key())); e != nil {
		return string(e), nil
	}
	serial := r.ID.Serial()
	if tx.Bucket(bucketDevices).Get([]byte(serial)) != nil {
		return "", fmt.Errorf("%w: serial %s (hardware ID %s)", ErrCollision, serial, r.ID.Key())
	}
	found, err := getRecord(tx.Bucket(bucketGroups), r.Group, g)
	if err != nil {
		return "", err
	}
	if !found {
		return "", fmt.Errorf("%w %q", ErrUnknownGroup, r.Group)
	}
	return "", nil
}

func viewOr(tx *bolt.Tx, serial string, err error) (*View, error) {
	if err != nil {
		return nil, err
	}
	return view(tx, serial)
}

// newDevice is a registration's new record and its audit event.
func (s *Bolt) newDevice(r Registration, g *Group) (*Device, *Event) {
	return NewDevice(r, g, s.stamp())
}

// NewDevice is the record a registration makes in group g at now, and its
// audit event: what every engine stores.
func NewDevice(r Registration, g *Group, now time.Time) (*Device, *Event) {
	serial := r.ID.Serial()
	d := &Device{
		Serial: serial, Board: r.ID.Board, HardwareID: r.ID.Canonical, Group: r.Group,
		Immutable: r.Immutable, Version: 1, VersionAt: now, Status: Active, KeysPinned: true,
		RegisteredBy: r.Actor, CreatedAt: now, UpdatedAt: now,
	}
	return d, &Event{At: now, Actor: r.Actor, Subject: "device/" + serial, Action: "register", Generation: d.Version + g.Version,
		Detail: map[string]string{"board": r.ID.Board, "group": r.Group, "hostname": r.Immutable.Hostname}}
}

// putIndexes makes a new device findable by its hardware ID and as a
// member of its group.
func putIndexes(tx *bolt.Tx, r Registration, serial string) error {
	if err := tx.Bucket(bucketHWIDs).Put([]byte(r.ID.Key()), []byte(serial)); err != nil {
		return err
	}
	return tx.Bucket(bucketMembers).Put([]byte(r.Group+"\x00"+serial), nil)
}
