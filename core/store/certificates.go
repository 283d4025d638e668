package store

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The certificates of a device: those proxies had issued (Issued, with
// their keys: the keys core accepts) and those the device was seen with
// (Certificates). A certificate that becomes known after its device was
// revoked (a proxy finishing an enrollment, a request admitted just before
// the revoke) is recorded and queued for revocation at the CA in the same
// transaction: no race with a revoke leaves one valid there.

// SeenCertificate remembers a certificate a device used, once. Callers
// that hold the device check HasCertificate first; this checks again
// inside its transaction.
func (s *Bolt) SeenCertificate(serial string, c Certificate) error {
	add := func(d *Device) *Event { return AddSeen(d, c, s.stamp()) }
	_, err := s.modifyDevice("certificate seen", serial, func(d *Device) (*Event, error) {
		if d.Status == Revoked {
			return nil, errLate
		}
		return add(d), nil
	})
	if errors.Is(err, errLate) {
		_, err = s.lateCertificate("certificate seen", serial, c.Serial, add)
	}
	return err
}

// RecordIssued remembers a certificate a proxy had issued for the device
// (the last MaxCertificates of them): what the re-enrollment policy
// decides on and whose key core accepts from the device. For a revoked
// device the certificate is recorded, queued for revocation at the CA and
// refused with ErrRevoked.
func (s *Bolt) RecordIssued(serial string, c Issued) (*View, error) {
	add := func(d *Device) *Event { return AddIssued(d, c, s.stamp()) }
	d, err := s.modifyDevice("certificate issued", serial, func(d *Device) (*Event, error) {
		if d.Status == Revoked {
			return nil, errLate
		}
		return add(d), nil
	})
	if errors.Is(err, errLate) {
		if _, err := s.lateCertificate("certificate issued", serial, c.Serial, add); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("device %s: certificate %s recorded and queued for revocation at the CA: %w", serial, c.Serial, ErrRevoked)
	}
	if err != nil {
		return nil, err
	}
	return s.withGroup(d)
}

// lateCertificate records a certificate of a revoked device with add (nil
// event: already recorded) and queues it for revocation at the CA, in one
// transaction.
func (s *Bolt) lateCertificate(op, serial, certSerial string, add func(d *Device) *Event) (*Device, error) {
	var d *Device
	err := s.updateDevice(op, serial, func(tx *bolt.Tx) (*Device, error) {
		var err error
		if d, err = device(tx, serial); err != nil {
			return nil, err
		}
		if err := queueCARevocation(tx, serial, certSerial, LateReason, s.stamp()); err != nil {
			return nil, err
		}
		ev := add(d)
		if ev == nil {
			return d, nil
		}
		if err := putRecord(tx.Bucket(bucketDevices), serial, d); err != nil {
			return nil, err
		}
		return d, audit(tx, *ev)
	})
	return d, err
}

// PinFirstKey pins the key of the first certificate a device is seen with
// when its record predates key pinning (PinsKeys false): c is recorded as
// if issued, and from then on core accepts only that key. It returns the
// device as stored and whether this call pinned the key; if another key
// was pinned first, the caller finds it in Issued.
func (s *Bolt) PinFirstKey(serial string, c Issued) (*View, bool, error) {
	pinned := false
	d, err := s.modifyDevice("key pinned", serial, func(d *Device) (*Event, error) {
		ev := PinKey(d, c, s.stamp())
		pinned = ev != nil
		return ev, nil
	})
	if err != nil {
		return nil, false, err
	}
	v, err := s.withGroup(d)
	return v, pinned, err
}
