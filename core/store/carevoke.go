package store

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The queue of revocations at the CA. Revoking a device writes its status
// and one entry per certificate known for it in the same transaction, so a
// revoke core has acknowledged is never lost: not when the CA is down, not
// when core stops. core/registry's worker works the queue until the CA
// confirms each entry; the completion goes to the device's audit trail and
// the entry leaves the queue. Admins see what is left (PendingCARevocations).

var bucketCARevocations = []byte("carevocations") // device 0x00 certificate serial -> CARevocation

// CARevocation is a certificate of a revoked device that the CA has not
// confirmed as revoked yet.
type CARevocation struct {
	Device      string    `json:"-"` // in the key
	Serial      string    `json:"-"` // the certificate's, decimal; in the key
	Reason      string    `json:"reason"`
	Since       time.Time `json:"since"`
	Attempts    int       `json:"attempts,omitempty"`
	LastError   string    `json:"lastError,omitempty"`
	NextAttempt time.Time `json:"nextAttempt"`
}

// maxErrorText bounds the last error kept with an entry.
const maxErrorText = 300

func caRevocationKey(device, certSerial string) []byte {
	return []byte(device + "\x00" + certSerial)
}

// readCARevocation decodes an entry and its key.
func readCARevocation(k, raw []byte) (CARevocation, error) {
	var r CARevocation
	dev, cert, ok := bytes.Cut(k, []byte{0})
	if !ok {
		return r, fmt.Errorf("%w: CA revocation key %q is malformed", ErrUnavailable, k)
	}
	if err := decode(raw, &r); err != nil {
		return r, fmt.Errorf("%w: CA revocation %q is corrupt: %w", ErrUnavailable, k, err)
	}
	r.Device, r.Serial = string(dev), string(cert)
	return r, nil
}

// queueCARevocations queues every certificate known for device d.
func queueCARevocations(tx *bolt.Tx, d *Device, reason string, now time.Time) error {
	for _, cert := range d.CertificateSerials() {
		if err := queueCARevocation(tx, d.Serial, cert, reason, now); err != nil {
			return err
		}
	}
	return nil
}

// queueCARevocation queues one certificate, due now. One already queued
// keeps its history and is due again at once.
func queueCARevocation(tx *bolt.Tx, device, certSerial, reason string, now time.Time) error {
	b := tx.Bucket(bucketCARevocations)
	key := caRevocationKey(device, certSerial)
	r := CARevocation{Reason: reason, Since: now}
	if raw := b.Get(key); raw != nil {
		var err error
		if r, err = readCARevocation(key, raw); err != nil {
			return err
		}
	}
	r.NextAttempt = now
	return putRecord(b, string(key), &r)
}

// PendingCARevocations are the device's certificates still to be revoked
// at the CA, by certificate serial.
func (s *Bolt) PendingCARevocations(device string) ([]CARevocation, error) {
	var out []CARevocation
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(device + "\x00")
		c := tx.Bucket(bucketCARevocations).Cursor()
		for k, raw := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, raw = c.Next() {
			r, err := readCARevocation(k, raw)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// CARevocationQueue is the state of the queue at a moment.
type CARevocationQueue struct {
	Due     []CARevocation // due by then, longest waiting first
	Pending int            // every entry, due or not
	Next    time.Time      // the earliest attempt of the entries not due; zero if none
}

// CARevocations reads the queue: what is due at now, and when the next
// entry falls due.
func (s *Bolt) CARevocations(now time.Time) (*CARevocationQueue, error) {
	q := &CARevocationQueue{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCARevocations).ForEach(func(k, raw []byte) error {
			r, err := readCARevocation(k, raw)
			if err != nil {
				return err
			}
			q.Pending++
			switch {
			case !r.NextAttempt.After(now):
				q.Due = append(q.Due, r)
			case q.Next.IsZero() || r.NextAttempt.Before(q.Next):
				q.Next = r.NextAttempt
			}
			return nil
		})
	})
	sort.SliceStable(q.Due, func(i, j int) bool { return q.Due[i].Since.Before(q.Due[j].Since) })
	return q, err
}

// CARevocationDone takes a certificate the CA confirmed as revoked off the
// queue and writes the device's audit event; outcome says how the CA
// answered. It reports false, writing nothing, when the entry was already
// gone (another attempt confirmed it first).
func (s *Bolt) CARevocationDone(device, certSerial, outcome string) (bool, error) {
	done := false
	err := s.changeCARevocation("CA revocation done", device, certSerial, func(b *bolt.Bucket, key []byte, r *CARevocation) error {
		if err := b.Delete(key); err != nil {
			return err
		}
		done = true
		return audit(b.Tx(), Event{At: s.stamp(), Actor: "core", Subject: "device/" + device, Action: "revoked at the CA",
			Detail: map[string]string{"serial": certSerial, "outcome": outcome, "attempts": strconv.Itoa(r.Attempts + 1)}})
	})
	return done, err
}

// CARevocationFailed records a failed attempt and when to try again.
func (s *Bolt) CARevocationFailed(device, certSerial, errText string, next time.Time) error {
	return s.changeCARevocation("CA revocation failed", device, certSerial, func(b *bolt.Bucket, key []byte, r *CARevocation) error {
		if len(errText) > maxErrorText {
			errText = errText[:maxErrorText] + "…"
		}
		r.Attempts++
		r.LastError, r.NextAttempt = errText, next.UTC()
		return putRecord(b, string(key), r)
	})
}

// changeCARevocation applies fn to a queued entry in one write; an entry
// no longer queued is left alone.
func (s *Bolt) changeCARevocation(op, device, certSerial string, fn func(b *bolt.Bucket, key []byte, r *CARevocation) error) error {
	return s.update(op, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCARevocations)
		key := caRevocationKey(device, certSerial)
		raw := b.Get(key)
		if raw == nil {
			return nil
		}
		r, err := readCARevocation(key, raw)
		if err != nil {
			return err
		}
		return fn(b, key, &r)
	})
}
