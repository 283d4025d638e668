package store

import (
	"bytes"
	"encoding/binary"
	"errors"

	bolt "go.etcd.io/bbolt"
)

// bbolt has one writer. Decoding a record, changing it and encoding it
// again (~40 µs with compression) is most of a write's work, so the
// frequent writes (registration, certificates issued and seen) do that
// outside the writer, on a snapshot read in a read transaction, where it
// runs on every core. The writer then only checks that the record it was
// computed from is still the stored one, byte for byte, and puts the new
// bytes; if another write changed it meanwhile, the change is prepared
// again from the new record. Within one commit, two changes of the same
// record therefore never both apply to the same snapshot.

// errStale leaves a prepared change out of its batch: its snapshot is out
// of date.
var errStale = errors.New("record changed since it was read")

// maxOptimistic bounds the optimistic attempts of one change; a record
// that keeps changing under it is then changed inside the writer.
const maxOptimistic = 4

// modifyDevice applies fn to device serial's record. fn changes d and
// returns the audit event of the change, or nil for no change; it must
// depend only on d, since it may run more than once. It returns the
// device as stored.
func (s *Store) modifyDevice(op, serial string, fn func(d *Device) (*Event, error)) (*Device, error) {
	for range maxOptimistic {
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
		record, err := encode(d)
		if err != nil {
			return nil, err
		}
		event, err := encodeEvent(*ev)
		if err != nil {
			return nil, err
		}
		txid := 0
		err = s.batch(op, func(tx *bolt.Tx) error {
			txid = tx.ID()
			b := tx.Bucket(bucketDevices)
			if !bytes.Equal(b.Get([]byte(serial)), base) {
				return errStale
			}
			if err := b.Put([]byte(serial), record); err != nil {
				return err
			}
			return putEvent(tx, ev.Subject, event)
		})
		if errors.Is(err, errStale) {
			continue
		}
		if err != nil {
			return nil, err
		}
		stored := *d
		s.devices.put(serial, txid, &stored)
		return d, nil
	}
	// Contended: do it all in the writer.
	var d *Device
	txid := 0
	err := s.update(op, func(tx *bolt.Tx) error {
		txid = tx.ID()
		var err error
		if d, err = device(tx, serial); err != nil {
			return err
		}
		ev, err := fn(d)
		if err != nil || ev == nil {
			return err
		}
		if err := putRecord(tx.Bucket(bucketDevices), serial, d); err != nil {
			return err
		}
		return audit(tx, *ev)
	})
	if err != nil {
		return nil, err
	}
	stored := *d
	s.devices.put(serial, txid, &stored)
	return d, nil
}

// putEvent stores an encoded audit event under the next sequence number.
// Events are stored without their sequence number and subject: the key
// holds both.
func putEvent(tx *bolt.Tx, subject string, event []byte) error {
	b := tx.Bucket(bucketAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	return b.Put(auditKey(subject, seq), event)
}

func auditKey(subject string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(subject+"\x00"), seq)
}

func audit(tx *bolt.Tx, e Event) error {
	raw, err := encodeEvent(e)
	if err != nil {
		return err
	}
	return putEvent(tx, e.Subject, raw)
}

func encodeEvent(e Event) ([]byte, error) {
	e.Seq, e.Subject = 0, "" // in the key
	return encode(e)
}
