package store

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketAdmissions   = []byte("admissions")   // serial -> Reservation
	bucketBatchMembers = []byte("batchmembers") // batch 0x00 serial -> nil: counted in the batch for good
)

func batchMemberKey(batch, serial string) []byte {
	return append(append([]byte(batch), 0), serial...)
}

// Admit decides on a proxy's request to enroll a board and, admitted,
// reserves its place; the decision and the reservation are one write
// transaction, so bbolt's single writer orders concurrent admissions.
func (s *Bolt) Admit(r AdmissionRequest) (*Admitted, error) {
	var out *Admitted
	err := s.update("admit", func(tx *bolt.Tx) error {
		adm, members, err := admissionBuckets(tx)
		if err != nil {
			return err
		}
		now := s.now()
		var st AdmissionState
		var held Reservation
		if found, err := getRecord(adm, r.Serial, &held); err != nil {
			return err
		} else if found {
			st.Held = &held
		}
		if r.Batch != "" {
			st.Member = members.Get(batchMemberKey(r.Batch, r.Serial)) != nil
			if st.Taken, err = taken(adm, members, r, now); err != nil {
				return err
			}
		}
		d, err := device(tx, r.Serial)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return err
		default:
			st.Issued = d.Issued
		}
		if out, err = DecideAdmission(r, st, now); err != nil {
			return err
		}
		return putRecord(adm, r.Serial, &out.Reservation)
	})
	if err != nil {
		return nil, fmt.Errorf("admit %s: %w", r.Serial, err)
	}
	return out, nil
}

// taken counts the batch's members and the live reservations in it of
// other serials not counted yet, and drops expired reservations (a proxy
// that died holds no place past its lease).
func taken(adm, members *bolt.Bucket, r AdmissionRequest, now time.Time) (int, error) {
	n := 0
	prefix := batchMemberKey(r.Batch, "")
	c := members.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	var expired [][]byte
	err := adm.ForEach(func(k, raw []byte) error {
		var res Reservation
		if err := decode(raw, &res); err != nil {
			return fmt.Errorf("%w: reservation %q is corrupt: %w", ErrUnavailable, k, err)
		}
		switch {
		case !res.Live(now):
			expired = append(expired, bytes.Clone(k))
		case res.Batch == r.Batch && string(k) != r.Serial && members.Get(batchMemberKey(r.Batch, string(k))) == nil:
			n++
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range expired {
		if string(k) == r.Serial {
			continue // decided on (as expired) and overwritten by the caller
		}
		if err := adm.Delete(k); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// EndAdmission ends one admitted attempt of serial with key: enrolled
// counts the serial in batch for good, released gives the place back
// (once every attempt sharing it has ended). An attempt whose lease
// expired and was taken over ends nothing of the new holder's; an
// enrolled one is still counted, since its certificate was issued.
func (s *Bolt) EndAdmission(batch, serial, keySHA256 string, enrolled bool) error {
	err := s.update("end admission", func(tx *bolt.Tx) error {
		adm, members, err := admissionBuckets(tx)
		if err != nil {
			return err
		}
		var held Reservation
		found, err := getRecord(adm, serial, &held)
		if err != nil {
			return err
		}
		var h *Reservation
		if found {
			h = &held
		}
		if rest, changed := EndReservation(h, keySHA256); changed {
			if rest == nil {
				err = adm.Delete([]byte(serial))
			} else {
				err = putRecord(adm, serial, rest)
			}
			if err != nil {
				return err
			}
		}
		if enrolled && batch != "" {
			return members.Put(batchMemberKey(batch, serial), nil)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("end admission of %s: %w", serial, err)
	}
	return nil
}

// admissionBuckets are the admission buckets, made on first use (a
// registry from before admissions has none; older cores ignore them).
func admissionBuckets(tx *bolt.Tx) (adm, members *bolt.Bucket, err error) {
	if adm, err = tx.CreateBucketIfNotExists(bucketAdmissions); err != nil {
		return nil, nil, err
	}
	if members, err = tx.CreateBucketIfNotExists(bucketBatchMembers); err != nil {
		return nil, nil, err
	}
	return adm, members, nil
}
