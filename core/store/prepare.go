package store

import (
	"bytes"
	"errors"

	bolt "go.etcd.io/bbolt"
)

// bbolt has one writer. Decoding a record, changing it and encoding it
// again (~40 µs with compression) is most of a write's work, so the
// frequent writes (registration, certificates issued and seen) do that
// outside the writer, on a snapshot read in a read transaction, where it
// runs on every core. The writer then only checks that the record it was
// computed from is still the stored one, byte for byte, and puts the new
// bytes; if another write changed it meanwhile (errStale), the change is
// prepared again from the new record. Within one commit, two changes of
// the same record therefore never both apply to the same snapshot.

// maxOptimistic bounds the optimistic attempts of one change; a record
// that keeps changing under it is then changed inside the writer.
const maxOptimistic = 4

// modifyDevice applies fn to device serial's record. fn changes d and
// returns the audit event of the change, or nil for no change; it must
// depend only on d, since it may run more than once. It returns the
// device as stored.
func (s *Bolt) modifyDevice(op, serial string, fn func(d *Device) (*Event, error)) (*Device, error) {
	for range maxOptimistic {
		d, err := s.modifyPrepared(op, serial, fn)
		if !errors.Is(err, errStale) {
			return d, err
		}
	}
	// Contended: do it all in the writer.
	return s.modifyInWriter(op, serial, fn)
}

// modifyPrepared is one optimistic attempt of modifyDevice; errStale when
// the record changed between the snapshot and the commit.
func (s *Bolt) modifyPrepared(op, serial string, fn func(d *Device) (*Event, error)) (*Device, error) {
	var base []byte
	var d *Device
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if d, err = device(tx, serial); err == nil {
			base = bytes.Clone(tx.Bucket(bucketDevices).Get([]byte(serial)))
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	ev, err := fn(d)
	if err != nil || ev == nil {
		return d, err
	}
	still := func(tx *bolt.Tx) error {
		if !bytes.Equal(tx.Bucket(bucketDevices).Get([]byte(serial)), base) {
			return errStale
		}
		return nil
	}
	if err := s.commitPrepared(op, serial, d, ev, still, nil); err != nil {
		return nil, err
	}
	return d, nil
}

// modifyInWriter is modifyDevice done entirely inside one write
// transaction.
func (s *Bolt) modifyInWriter(op, serial string, fn func(d *Device) (*Event, error)) (*Device, error) {
	var d *Device
	err := s.updateDevice(op, serial, func(tx *bolt.Tx) (*Device, error) {
		var err error
		if d, err = device(tx, serial); err != nil {
			return nil, err
		}
		ev, err := fn(d)
		if err != nil || ev == nil {
			return d, err
		}
		if err := putRecord(tx.Bucket(bucketDevices), serial, d); err != nil {
			return nil, err
		}
		return d, audit(tx, *ev)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// commitPrepared encodes device d and its event outside the writer, then
// commits them through the group committer: inside the writer, still
// checks that what d was computed from is unchanged (errStale if not),
// and also, if set, writes what goes with the record. Once committed, d
// is cached as stored.
func (s *Bolt) commitPrepared(op, serial string, d *Device, ev *Event, still, also func(tx *bolt.Tx) error) error {
	record, err := encode(d)
	if err != nil {
		return err
	}
	event, err := encodeEvent(*ev)
	if err != nil {
		return err
	}
	txid := 0
	err = s.batch(op, func(tx *bolt.Tx) error {
		txid = tx.ID()
		if err := still(tx); err != nil {
			return err
		}
		if err := tx.Bucket(bucketDevices).Put([]byte(serial), record); err != nil {
			return err
		}
		if also != nil {
			if err := also(tx); err != nil {
				return err
			}
		}
		return putEvent(tx, ev.Subject, event)
	})
	if err != nil {
		return err
	}
	stored := *d
	s.devices.put(serial, txid, &stored)
	return nil
}
