package store

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Audit returns up to limit events of a subject (device/<serial> or
// group/<name>), oldest first, after sequence number after.
func (s *Bolt) Audit(subject string, after uint64, limit int) ([]Event, error) {
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(subject + "\x00")
		c := tx.Bucket(bucketAudit).Cursor()
		start := append(append([]byte{}, prefix...), binary.BigEndian.AppendUint64(nil, after+1)...)
		for k, raw := c.Seek(start); k != nil && len(k) == len(prefix)+8 && string(k[:len(prefix)]) == string(prefix); k, raw = c.Next() {
			var e Event
			seq := binary.BigEndian.Uint64(k[len(prefix):])
			if err := decode(raw, &e); err != nil {
				return fmt.Errorf("%w: audit record %d of %s is corrupt: %w", ErrUnavailable, seq, subject, err)
			}
			e.Seq, e.Subject = seq, subject
			out = append(out, e)
			if len(out) == limit {
				return nil
			}
		}
		return nil
	})
	return out, err
}

// AppendAudit writes an event that changes no record (a refusal worth
// keeping) to its subject's audit trail.
func (s *Bolt) AppendAudit(e Event) error {
	return s.update(e.Action, func(tx *bolt.Tx) error { return audit(tx, e) })
}

// audit stores event e in tx.
func audit(tx *bolt.Tx, e Event) error {
	raw, err := encodeEvent(e)
	if err != nil {
		return err
	}
	return putEvent(tx, e.Subject, raw)
}

// encodeEvent encodes an event for putEvent, which may run in the writer
// long after (prepare.go).
func encodeEvent(e Event) ([]byte, error) {
	e.Seq, e.Subject = 0, "" // in the key
	return encode(e)
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
