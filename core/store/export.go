package store

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Moving a registry from one engine to another (prov-core store migrate):
// an engine that can be read whole is an Exporter, and an engine that can
// be filled whole is an importer of what Export yields (core/store/postgres:
// Import). Export is not part of Store: a serving core never reads its
// registry whole.

// Exported is what an export holds, each kind in a fixed order: every group
// by name, every device by serial (with its hardware ID's key), every audit
// event by subject and sequence number, every entry of the CA revocation
// queue by device and certificate serial. An importer can stream it:
// groups come before the devices that name them.
type Exported struct {
	Group        func(g *Group) error
	Device       func(hardwareKey string, d *Device) error
	Audit        func(e *Event) error // with its Seq and Subject
	CARevocation func(r *CARevocation) error
	// BatchMember is a serial counted in a batch's quota for good (its
	// places in use; reservations in progress are not exported: a
	// registry is moved with its proxies stopped).
	BatchMember func(batch, serial string) error
}

// Exporter is an engine that can be read whole, consistently (one
// snapshot).
type Exporter interface {
	Export(to Exported) error
}

var _ Exporter = (*Bolt)(nil)

// HardwareKey is the key of the hardware ID a device record holds: the
// hardware ID index of every engine (hwid.ID.Key).
func HardwareKey(d *Device) string { return d.Board + "/" + d.HardwareID }

// Export reads the whole registry in one read transaction.
func (s *Bolt) Export(to Exported) error {
	return s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketGroups).ForEach(func(k, raw []byte) error {
			var g Group
			if err := decode(raw, &g); err != nil {
				return fmt.Errorf("%w: group %q is corrupt: %w", ErrUnavailable, k, err)
			}
			return to.Group(&g)
		})
		if err != nil {
			return err
		}
		hwids := tx.Bucket(bucketHWIDs)
		err = tx.Bucket(bucketDevices).ForEach(func(k, raw []byte) error {
			var d Device
			if err := decode(raw, &d); err != nil {
				return fmt.Errorf("%w: device %q is corrupt: %w", ErrUnavailable, k, err)
			}
			key := HardwareKey(&d)
			// The index must agree with the record: a store where it does
			// not is damaged, and copying it would hide that.
			if got := hwids.Get([]byte(key)); !bytes.Equal(got, k) {
				return fmt.Errorf("%w: device %s: the hardware ID index names %q for %s", ErrUnavailable, k, got, key)
			}
			return to.Device(key, &d)
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketAudit).ForEach(func(k, raw []byte) error {
			subject, seq, ok := bytes.Cut(k, []byte{0})
			if !ok || len(seq) != 8 {
				return fmt.Errorf("%w: audit key %q is malformed", ErrUnavailable, k)
			}
			var e Event
			if err := decode(raw, &e); err != nil {
				return fmt.Errorf("%w: audit record %q is corrupt: %w", ErrUnavailable, k, err)
			}
			e.Subject, e.Seq = string(subject), binary.BigEndian.Uint64(seq)
			return to.Audit(&e)
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketCARevocations).ForEach(func(k, raw []byte) error {
			r, err := readCARevocation(k, raw)
			if err != nil {
				return err
			}
			return to.CARevocation(&r)
		})
		members := tx.Bucket(bucketBatchMembers) // made on first use
		if err != nil || members == nil {
			return err
		}
		return members.ForEach(func(k, _ []byte) error {
			batch, serial, ok := bytes.Cut(k, []byte{0})
			if !ok {
				return fmt.Errorf("%w: batch member key %q is malformed", ErrUnavailable, k)
			}
			return to.BatchMember(string(batch), string(serial))
		})
	})
}

// Counts are how many records of each kind a registry holds.
type Counts struct {
	Groups, Devices, Audit, CARevocations, BatchMembers int
}

func (c Counts) String() string {
	return fmt.Sprintf("%d groups, %d devices, %d audit events, %d CA revocations queued, %d batch places used",
		c.Groups, c.Devices, c.Audit, c.CARevocations, c.BatchMembers)
}

// Count reads an engine whole and counts its records.
func Count(e Exporter) (Counts, error) {
	var c Counts
	err := e.Export(Exported{
		Group:        func(*Group) error { c.Groups++; return nil },
		Device:       func(string, *Device) error { c.Devices++; return nil },
		Audit:        func(*Event) error { c.Audit++; return nil },
		CARevocation: func(*CARevocation) error { c.CARevocations++; return nil },
		BatchMember:  func(string, string) error { c.BatchMembers++; return nil },
	})
	return c, err
}
