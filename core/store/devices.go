package store

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// device reads a device's record in tx.
func device(tx *bolt.Tx, serial string) (*Device, error) {
	var d Device
	found, err := getRecord(tx.Bucket(bucketDevices), serial, &d)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("device %s: %w", serial, ErrNotFound)
	}
	return &d, nil
}

// view reads a device and its group in tx.
func view(tx *bolt.Tx, serial string) (*View, error) {
	d, err := device(tx, serial)
	if err != nil {
		return nil, err
	}
	g, err := deviceGroup(tx, serial, d.Group)
	if err != nil {
		return nil, err
	}
	return heldView(tx, NewView(d, g))
}

// Device returns a device and its group.
func (s *Bolt) Device(serial string) (*View, error) {
	if d, ok := s.devices.get(serial); ok && !s.held.has(d.Group) {
		if g := s.cachedGroup(d.Group); g != nil {
			return NewView(d, g), nil
		}
	}
	var d *Device
	var g *Group
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if d, err = device(tx, serial); err != nil {
			return err
		}
		dc := *d
		s.devices.put(serial, tx.ID(), &dc)
		if g = s.cachedGroup(d.Group); g != nil {
			return nil
		}
		if g, err = deviceGroup(tx, serial, d.Group); err != nil {
			return err
		}
		s.cacheGroup(g)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if s.held.has(d.Group) {
		return s.heldViewOf(d, g)
	}
	return NewView(d, g), nil
}

// heldViewOf is device d with group g, or with the version of g it is
// held at.
func (s *Bolt) heldViewOf(d *Device, g *Group) (*View, error) {
	var v *View
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		v, err = heldView(tx, NewView(d, g))
		return err
	})
	return v, err
}

// withGroup is a device's view with its group as it is now.
func (s *Bolt) withGroup(d *Device) (*View, error) {
	g := s.cachedGroup(d.Group)
	if g == nil {
		var err error
		if g, err = s.Group(d.Group); err != nil {
			return nil, fmt.Errorf("device %s: %w", d.Serial, err)
		}
	}
	if s.held.has(d.Group) {
		return s.heldViewOf(d, g)
	}
	return NewView(d, g), nil
}

// List returns up to limit devices with serials after cursor, in serial
// order, and the cursor of the next page ("" at the end).
func (s *Bolt) List(cursor string, limit int) ([]View, string, error) {
	var out []View
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDevices).Cursor()
		k, _ := c.Seek([]byte(cursor))
		if k != nil && string(k) == cursor {
			k, _ = c.Next()
		}
		for ; k != nil; k, _ = c.Next() {
			if len(out) == limit {
				next = out[len(out)-1].Serial
				return nil
			}
			v, err := view(tx, string(k))
			if err != nil {
				return err
			}
			out = append(out, *v)
		}
		return nil
	})
	return out, next, err
}

// SetDeviceData changes a device's own mutable data if its generation is
// still ifGeneration (else ErrConflict). check validates the device as it
// would be; an error from it aborts the change.
func (s *Bolt) SetDeviceData(serial string, ifGeneration uint64, c Change, actor string, check func(*View) error) (*View, error) {
	return s.changeDevice(serial, "set data", actor, func(v *View) (map[string]string, error) {
		if v.Generation() != ifGeneration {
			return nil, fmt.Errorf("device %s is at generation %d, not %d: %w", serial, v.Generation(), ifGeneration, ErrConflict)
		}
		v.Data = c.Apply(v.Data)
		if err := check(v); err != nil {
			return nil, err
		}
		return c.Detail(), nil
	})
}

// Reprovision moves a device to a new generation with the same data.
func (s *Bolt) Reprovision(serial, actor string) (*View, error) {
	return s.changeDevice(serial, "reprovision", actor, func(*View) (map[string]string, error) { return nil, nil })
}

// changeDevice moves an active device to its next version after fn has
// changed it; fn returns the detail of the audit event.
func (s *Bolt) changeDevice(serial, action, actor string, fn func(*View) (map[string]string, error)) (*View, error) {
	var v *View
	err := s.updateDevice(action, serial, func(tx *bolt.Tx) (*Device, error) {
		var err error
		if v, err = view(tx, serial); err != nil {
			return nil, err
		}
		ev, err := Advance(v, action, actor, s.stamp(), fn)
		if err != nil {
			return nil, err
		}
		if err := putRecord(tx.Bucket(bucketDevices), serial, &v.Device); err != nil {
			return nil, err
		}
		return &v.Device, audit(tx, *ev)
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Revoke marks a device revoked: core refuses it from now on. In the same
// transaction it queues every certificate known for the device, issued or
// seen, for revocation at the CA (carevoke.go), so an acknowledged revoke
// reaches the CA even if core stops first. Revoking a revoked device
// changes nothing but queues its certificates again: a way to repeat the
// CA's part.
func (s *Bolt) Revoke(serial, actor, reason string) (*View, error) {
	var v *View
	err := s.updateDevice("revoke", serial, func(tx *bolt.Tx) (*Device, error) {
		var err error
		if v, err = view(tx, serial); err != nil {
			return nil, err
		}
		now := s.stamp()
		if err := queueCARevocations(tx, &v.Device, RevokedReason(reason), now); err != nil {
			return nil, err
		}
		ev := MarkRevoked(&v.Device, actor, reason, now)
		if ev == nil {
			return &v.Device, nil
		}
		if err := putRecord(tx.Bucket(bucketDevices), serial, &v.Device); err != nil {
			return nil, err
		}
		return &v.Device, audit(tx, *ev)
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}
