package store

import (
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/untrusted"
)

// Report is a device's latest report of what it runs, as core keeps it.
type Report = coreapi.DeviceReport

// MemberState is a member of a group as the fleet view and a rollout see
// it: its generation now, whether a rollout holds it at earlier group
// data, and its latest report (nil: it never reported).
type MemberState struct {
	Serial     string
	Status     Status
	Generation uint64
	Held       bool
	Report     *Report
}

// NextReport is what a report r, received at received, makes of the
// stored one (nil if none): the record to store, and the audit event if
// it is a transition (another generation, state or running generation).
// The same report again only refreshes Received, and a report older than
// the stored one from the same boot (a retry overtaken by a newer report)
// changes nothing: store is false.
func NextReport(serial string, old *Report, r coreapi.Report, received time.Time) (next *Report, ev *Event, store bool) {
	if old != nil && old.BootID == r.BootID && r.At.Before(old.At) {
		return old, nil, false
	}
	next = &Report{Report: r, Received: received}
	next.At = r.At.UTC()
	if old != nil && old.Generation == r.Generation && old.State == r.State && old.Running == r.Running && old.Error == r.Error {
		return next, nil, true
	}
	detail := map[string]string{"state": string(r.State), "running": strconv.FormatUint(r.Running, 10), "bootId": untrusted.Quote(r.BootID)}
	if r.Error != "" {
		detail["error"] = untrusted.Quote(r.Error)
	}
	if old != nil {
		detail["was"] = fmt.Sprintf("%s at generation %d", old.State, old.Generation)
	}
	return next, &Event{At: received, Actor: "device/" + serial, Subject: "device/" + serial, Action: "report", Generation: r.Generation, Detail: detail}, true
}

var bucketReports = []byte("reports") // serial -> Report

// SaveReport keeps a device's latest report (NextReport); its transitions
// go to the device's audit trail. ErrNotFound for an unknown device.
func (s *Bolt) SaveReport(serial string, r coreapi.Report) (*Report, error) {
	var out *Report
	err := s.batch("report", func(tx *bolt.Tx) error {
		if tx.Bucket(bucketDevices).Get([]byte(serial)) == nil {
			return fmt.Errorf("device %s: %w", serial, ErrNotFound)
		}
		b := tx.Bucket(bucketReports)
		old, err := readReport(b, serial)
		if err != nil {
			return err
		}
		next, ev, save := NextReport(serial, old, r, s.stamp())
		out = next
		if !save {
			return nil
		}
		if err := putRecord(b, serial, next); err != nil {
			return err
		}
		if ev == nil {
			return nil
		}
		return audit(tx, *ev)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func readReport(b *bolt.Bucket, serial string) (*Report, error) {
	if b == nil {
		return nil, nil
	}
	var rep Report
	found, err := getRecord(b, serial, &rep)
	if err != nil || !found {
		return nil, err
	}
	return &rep, nil
}

// Report is a device's latest report; nil if it never reported.
func (s *Bolt) Report(serial string) (*Report, error) {
	var out *Report
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		out, err = readReport(tx.Bucket(bucketReports), serial)
		return err
	})
	return out, err
}

// GroupStates calls fn with each member of a group, in serial order.
func (s *Bolt) GroupStates(group string, fn func(MemberState) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return eachUnder(tx.Bucket(bucketMembers), []byte(group+"\x00"), memberStates(tx, fn))
	})
}

// memberStates is fn called with the MemberState of each serial.
func memberStates(tx *bolt.Tx, fn func(MemberState) error) func(serial []byte) error {
	return func(serial []byte) error {
		m, err := memberState(tx, string(serial))
		if err != nil {
			return err
		}
		return fn(*m)
	}
}

// memberState reads one device's MemberState in tx.
func memberState(tx *bolt.Tx, serial string) (*MemberState, error) {
	v, err := view(tx, serial)
	if err != nil {
		return nil, err
	}
	rep, err := readReport(tx.Bucket(bucketReports), serial)
	if err != nil {
		return nil, err
	}
	return &MemberState{Serial: serial, Status: v.Status, Generation: v.Generation(), Held: v.Held, Report: rep}, nil
}
