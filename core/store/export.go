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
// queue by device and certificate serial, every batch place by batch and
// serial, then what reports and rollouts keep: every device's latest
// report by serial, every kept group version by group and version, every
// hold by group and serial, every rollout by ID, every wave member by
// rollout, wave and serial. An importer can stream it: groups come before
// the devices that name them, devices and rollouts before what names them.
// Every callback is called; none may be nil.
type Exported struct {
	Group        func(g *Group) error
	Device       func(hardwareKey string, d *Device) error
	Audit        func(e *Event) error // with its Seq and Subject
	CARevocation func(r *CARevocation) error
	// BatchMember is a serial counted in a batch's quota for good (its
	// places in use; reservations in progress are not exported: a
	// registry is moved with its proxies stopped).
	BatchMember func(batch, serial string) error
	// Report is a device's latest report.
	Report func(serial string, r *Report) error
	// GroupVersion is a group's record as it was at a version a rollout
	// keeps (held members are read with it).
	GroupVersion func(g *Group) error
	// Hold is a member a rollout holds at an earlier version of its
	// group: without it the member would be served the new data of a
	// rollout that has not released it.
	Hold func(group, serial string, version uint64) error
	// Rollout is a rollout's record, active or over.
	Rollout func(ro *Rollout) error
	// WaveMember is a member a rollout's wave released.
	WaveMember func(rollout uint64, wave int, serial string) error
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
		for _, part := range []func(*bolt.Tx, Exported) error{exportGroups, exportDevices, exportAudit, exportCARevocations,
			exportBatchMembers, exportReports, exportGroupVersions, exportHolds, exportRollouts, exportWaveMembers} {
			if err := part(tx, to); err != nil {
				return err
			}
		}
		return nil
	})
}

// eachIn calls fn with every key and value of a bucket; a bucket made on
// first use, or since added to the schema (a file opened read-only that
// predates it), may be missing: it holds nothing.
func eachIn(tx *bolt.Tx, bucket []byte, fn func(k, v []byte) error) error {
	b := tx.Bucket(bucket)
	if b == nil {
		return nil
	}
	return b.ForEach(fn)
}

func exportGroups(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketGroups, func(k, raw []byte) error {
		var g Group
		if err := decode(raw, &g); err != nil {
			return fmt.Errorf("%w: group %q is corrupt: %w", ErrUnavailable, k, err)
		}
		return to.Group(&g)
	})
}

func exportDevices(tx *bolt.Tx, to Exported) error {
	hwids := tx.Bucket(bucketHWIDs)
	return eachIn(tx, bucketDevices, func(k, raw []byte) error {
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
}

func exportAudit(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketAudit, func(k, raw []byte) error {
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
}

func exportCARevocations(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketCARevocations, func(k, raw []byte) error {
		r, err := readCARevocation(k, raw)
		if err != nil {
			return err
		}
		return to.CARevocation(&r)
	})
}

func exportBatchMembers(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketBatchMembers, func(k, _ []byte) error {
		batch, serial, ok := bytes.Cut(k, []byte{0})
		if !ok {
			return fmt.Errorf("%w: batch member key %q is malformed", ErrUnavailable, k)
		}
		return to.BatchMember(string(batch), string(serial))
	})
}

func exportReports(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketReports, func(k, raw []byte) error {
		var r Report
		if err := decode(raw, &r); err != nil {
			return fmt.Errorf("%w: report of %q is corrupt: %w", ErrUnavailable, k, err)
		}
		return to.Report(string(k), &r)
	})
}

// exportGroupVersions yields each kept version of a group; its key, by
// which a held member's read finds it, must name the record's group and
// version (an importer keys it by the record).
func exportGroupVersions(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketGroupVersions, func(k, raw []byte) error {
		var g Group
		if err := decode(raw, &g); err != nil {
			return fmt.Errorf("%w: kept group version %q is corrupt: %w", ErrUnavailable, k, err)
		}
		if !bytes.Equal(k, groupVersionKey(g.Name, g.Version)) {
			return fmt.Errorf("%w: kept group version %q holds version %d of group %q", ErrUnavailable, k, g.Version, g.Name)
		}
		return to.GroupVersion(&g)
	})
}

func exportHolds(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketHolds, func(k, v []byte) error {
		group, serial, ok := bytes.Cut(k, []byte{0})
		if !ok || len(v) != 8 {
			return fmt.Errorf("%w: hold %q is malformed", ErrUnavailable, k)
		}
		return to.Hold(string(group), string(serial), binary.BigEndian.Uint64(v))
	})
}

func exportRollouts(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketRollouts, func(k, raw []byte) error {
		var ro Rollout
		if err := decode(raw, &ro); err != nil {
			return fmt.Errorf("%w: rollout record % x is corrupt: %w", ErrUnavailable, k, err)
		}
		if !bytes.Equal(k, u64(ro.ID)) {
			return fmt.Errorf("%w: rollout record % x holds rollout %d", ErrUnavailable, k, ro.ID)
		}
		return to.Rollout(&ro)
	})
}

func exportWaveMembers(tx *bolt.Tx, to Exported) error {
	return eachIn(tx, bucketRolloutWaves, func(k, _ []byte) error {
		if len(k) <= 12 {
			return fmt.Errorf("%w: wave member key % x is malformed", ErrUnavailable, k)
		}
		return to.WaveMember(binary.BigEndian.Uint64(k), int(binary.BigEndian.Uint32(k[8:12])), string(k[12:]))
	})
}

// Counts are how many records of each kind a registry holds.
type Counts struct {
	Groups, Devices, Audit, CARevocations, BatchMembers  int
	Reports, GroupVersions, Holds, Rollouts, WaveMembers int
}

func (c Counts) String() string {
	return fmt.Sprintf("%d groups, %d devices, %d audit events, %d CA revocations queued, %d batch places used, "+
		"%d reports, %d rollouts, %d wave members, %d devices held at %d kept group versions",
		c.Groups, c.Devices, c.Audit, c.CARevocations, c.BatchMembers,
		c.Reports, c.Rollouts, c.WaveMembers, c.Holds, c.GroupVersions)
}

// Count reads an engine whole and counts its records.
func Count(e Exporter) (Counts, error) {
	var c Counts
	err := e.Export(counting(&c))
	return c, err
}

// counting is an export that counts every record into c.
func counting(c *Counts) Exported {
	return Exported{
		Group:        func(*Group) error { c.Groups++; return nil },
		Device:       func(string, *Device) error { c.Devices++; return nil },
		Audit:        func(*Event) error { c.Audit++; return nil },
		CARevocation: func(*CARevocation) error { c.CARevocations++; return nil },
		BatchMember:  func(string, string) error { c.BatchMembers++; return nil },
		Report:       func(string, *Report) error { c.Reports++; return nil },
		GroupVersion: func(*Group) error { c.GroupVersions++; return nil },
		Hold:         func(string, string, uint64) error { c.Holds++; return nil },
		Rollout:      func(*Rollout) error { c.Rollouts++; return nil },
		WaveMember:   func(uint64, int, string) error { c.WaveMembers++; return nil },
	}
}
