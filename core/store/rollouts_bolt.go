package store

import (
	"encoding/binary"
	"fmt"
	"maps"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

var (
	bucketHolds         = []byte("holds")         // group 0x00 serial -> the group version it is held at
	bucketGroupVersions = []byte("groupversions") // group 0x00 version -> Group as it was
	bucketRollouts      = []byte("rollouts")      // id -> Rollout
	bucketRolloutWaves  = []byte("rolloutwaves")  // id, wave (4 bytes), serial -> nil
)

// heldGroups remembers which groups may have held members, so that the
// read path of a group without any needs no look at the holds bucket.
// It is filled at open and only ever set while the store is open, before
// the write that holds members commits: a group it names may have none
// (that costs a lookup), but one with holds is never missing from it.
type heldGroups struct {
	mu sync.RWMutex
	m  map[string]bool
}

func (h *heldGroups) has(group string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.m[group]
}

func (h *heldGroups) set(group string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m[group] = true
}

// loadHeldGroups fills h from the holds bucket.
func loadHeldGroups(tx *bolt.Tx, h *heldGroups) {
	b := tx.Bucket(bucketHolds)
	if b == nil {
		return
	}
	c := b.Cursor()
	for k, _ := c.First(); k != nil; {
		i := indexByte(k, 0)
		if i < 0 {
			k, _ = c.Next()
			continue
		}
		group := string(k[:i])
		h.set(group)
		k, _ = c.Seek(append([]byte(group), 1)) // past this group's holds
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func holdKey(group, serial string) []byte { return []byte(group + "\x00" + serial) }

func groupVersionKey(group string, version uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(group+"\x00"), version)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func waveKey(id uint64, wave int, serial string) []byte {
	return append(binary.BigEndian.AppendUint32(u64(id), uint32(wave)), serial...) //nolint:gosec // waves are few
}

// heldView is v as its hold makes it: the group's data at the version it
// is held at, if a rollout holds it.
func heldView(tx *bolt.Tx, v *View) (*View, error) {
	b := tx.Bucket(bucketHolds)
	if b == nil {
		return v, nil
	}
	raw := b.Get(holdKey(v.Group, v.Serial))
	if raw == nil {
		return v, nil
	}
	at := binary.BigEndian.Uint64(raw)
	var g Group
	found, err := getRecord(tx.Bucket(bucketGroupVersions), string(groupVersionKey(v.Group, at)), &g)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: device %s is held at version %d of group %s, which is not kept", ErrUnavailable, v.Serial, at, v.Group)
	}
	out := NewView(&v.Device, &g)
	out.Held = true
	return out, nil
}

// StartRollout changes a group's data (If-Match ifVersion, check) as
// rollout ro: the version it leaves is kept, every member not already held
// is held at it, and ro is stored with its ID and the group's versions;
// no member moves until a step releases it. ErrRolloutActive if the group
// has an active rollout.
func (s *Bolt) StartRollout(ro *Rollout, ifVersion uint64, c Change, actor string, check func(*Group) error) (*Rollout, *Group, error) {
	var out *Rollout
	var g Group
	err := s.update("start rollout", func(tx *bolt.Tx) error {
		groups := tx.Bucket(bucketGroups)
		found, err := getRecord(groups, ro.Group, &g)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w %q", ErrUnknownGroup, ro.Group)
		}
		if g.Rollout != 0 {
			return fmt.Errorf("group %s: rollout %d: %w", ro.Group, g.Rollout, ErrRolloutActive)
		}
		if g.Version != ifVersion {
			return fmt.Errorf("group %s is at version %d, not %d: %w", ro.Group, g.Version, ifVersion, ErrConflict)
		}
		if err := putRecord(tx.Bucket(bucketGroupVersions), string(groupVersionKey(g.Name, g.Version)), &g); err != nil {
			return err
		}
		rollouts := tx.Bucket(bucketRollouts)
		id, err := rollouts.NextSequence()
		if err != nil {
			return err
		}
		now := s.stamp()
		out = StartRolloutRecord(ro, &g, id, actor, c)
		out.CreatedAt, out.UpdatedAt = now, now
		s.held.set(g.Name) // before any hold is visible
		if err := holdMembers(tx, g.Name, g.Version, &out.Members); err != nil {
			return err
		}
		g.Data = c.Apply(g.Data)
		if err := check(&g); err != nil {
			return err
		}
		g.Version++
		g.VersionAt = now
		g.Rollout = id
		if err := putRecord(groups, g.Name, &g); err != nil {
			return err
		}
		if err := putRecord(rollouts, string(u64(id)), out); err != nil {
			return err
		}
		detail := c.Detail()
		detail["rollout"] = fmt.Sprint(id)
		return audit(tx, Event{At: now, Actor: actor, Subject: "group/" + g.Name, Action: "rollout start", Detail: detail})
	})
	if err != nil {
		return nil, nil, err
	}
	s.cacheGroup(&g)
	return out, &g, nil
}

// holdMembers holds every member of group not held yet at version, and
// counts the members.
func holdMembers(tx *bolt.Tx, group string, version uint64, members *int) error {
	holds := tx.Bucket(bucketHolds)
	prefix := []byte(group + "\x00")
	c := tx.Bucket(bucketMembers).Cursor()
	for k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Next() {
		*members++
		if holds.Get(k) != nil {
			continue
		}
		if err := holds.Put(append([]byte{}, k...), u64(version)); err != nil {
			return err
		}
	}
	return nil
}

// StepRollout stores a rollout's next state and releases the step's
// members, in one write; a rollout that ends (done) lets its group's data
// change again. It returns the serials it released (held until now).
func (s *Bolt) StepRollout(st RolloutStep) (*Rollout, []string, error) {
	var out *Rollout
	var released []string
	err := s.update("step rollout", func(tx *bolt.Tx) error {
		released = nil
		stored, err := rolloutIn(tx, st.Next.ID)
		if err != nil {
			return err
		}
		if err := CheckStep(stored, st.IfRev); err != nil {
			return err
		}
		holds, waves, members := tx.Bucket(bucketHolds), tx.Bucket(bucketRolloutWaves), tx.Bucket(bucketMembers)
		for _, serial := range st.Release {
			k := holdKey(stored.Group, serial)
			if members.Get(k) == nil {
				continue // not a member (any more)
			}
			if holds.Get(k) != nil {
				if err := holds.Delete(k); err != nil {
					return err
				}
				released = append(released, serial)
			}
			if err := waves.Put(waveKey(stored.ID, st.Wave, serial), nil); err != nil {
				return err
			}
		}
		now := s.stamp()
		next := *st.Next
		next.Rev, next.UpdatedAt = stored.Rev+1, now
		if err := putRecord(tx.Bucket(bucketRollouts), string(u64(next.ID)), &next); err != nil {
			return err
		}
		if !next.State.Active() {
			if err := s.endRollout(tx, next.Group, nil); err != nil {
				return err
			}
		}
		out = &next
		return audit(tx, Event{At: now, Actor: st.Actor, Subject: "group/" + next.Group, Action: st.Action, Detail: RolloutDetail(&next, st.Detail, len(released))})
	})
	if err != nil {
		return nil, nil, err
	}
	return out, released, nil
}

// RolloutDetail is the detail of a rollout step's audit event.
func RolloutDetail(ro *Rollout, detail map[string]string, released int) map[string]string {
	d := maps.Clone(detail)
	if d == nil {
		d = map[string]string{}
	}
	d["rollout"] = fmt.Sprint(ro.ID)
	d["state"] = string(ro.State)
	if released > 0 {
		d["released"] = fmt.Sprint(released)
	}
	return d
}

// endRollout clears the group's active rollout; change, if set, changes
// its data too, as a new version (an abort). The group is cached once the
// transaction has committed.
func (s *Bolt) endRollout(tx *bolt.Tx, group string, change func(g *Group) error) error {
	var g Group
	found, err := getRecord(tx.Bucket(bucketGroups), group, &g)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: rollout of group %s, which is missing", ErrUnavailable, group)
	}
	g.Rollout = 0
	if change != nil {
		if err := change(&g); err != nil {
			return err
		}
	}
	if err := putRecord(tx.Bucket(bucketGroups), group, &g); err != nil {
		return err
	}
	tx.OnCommit(func() { s.cacheGroup(&g) })
	return nil
}

// AbortRollout ends a rollout still at ifRev by changing its group's data
// back to the version it started from, as a new version (check validates
// it): released members move forward to it; held members stay held at the
// version they have, whose data it is. It returns the group.
func (s *Bolt) AbortRollout(next *Rollout, ifRev uint64, actor, reason string, check func(*Group) error) (*Rollout, *Group, error) {
	var out *Rollout
	var group *Group
	err := s.update("abort rollout", func(tx *bolt.Tx) error {
		stored, err := rolloutIn(tx, next.ID)
		if err != nil {
			return err
		}
		if err := CheckStep(stored, ifRev); err != nil {
			return err
		}
		var from Group
		found, err := getRecord(tx.Bucket(bucketGroupVersions), string(groupVersionKey(stored.Group, stored.FromVersion)), &from)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: version %d of group %s is not kept", ErrUnavailable, stored.FromVersion, stored.Group)
		}
		now := s.stamp()
		ro := *next
		err = s.endRollout(tx, stored.Group, func(g *Group) error {
			g.Data = maps.Clone(from.Data)
			if err := check(g); err != nil {
				return err
			}
			g.Version++
			g.VersionAt = now
			ro.AbortVersion = g.Version
			group = g
			return nil
		})
		if err != nil {
			return err
		}
		ro.State, ro.Reason, ro.Rev, ro.UpdatedAt = coreapi.RolloutAborted, reason, stored.Rev+1, now
		if err := putRecord(tx.Bucket(bucketRollouts), string(u64(ro.ID)), &ro); err != nil {
			return err
		}
		out = &ro
		return audit(tx, Event{At: now, Actor: actor, Subject: "group/" + ro.Group, Action: "rollout abort",
			Detail: RolloutDetail(&ro, map[string]string{"reason": reason, "version": fmt.Sprint(ro.AbortVersion)}, 0)})
	})
	if err != nil {
		return nil, nil, err
	}
	return out, group, nil
}

func rolloutIn(tx *bolt.Tx, id uint64) (*Rollout, error) {
	var ro Rollout
	b := tx.Bucket(bucketRollouts)
	if b == nil { // a file opened read-only from before rollouts
		return nil, fmt.Errorf("rollout %d: %w", id, ErrNotFound)
	}
	found, err := getRecord(b, string(u64(id)), &ro)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("rollout %d: %w", id, ErrNotFound)
	}
	return &ro, nil
}

// Rollout reads a rollout; ErrNotFound.
func (s *Bolt) Rollout(id uint64) (*Rollout, error) {
	var out *Rollout
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		out, err = rolloutIn(tx, id)
		return err
	})
	return out, err
}

// Rollouts are a group's rollouts ("": every group's), newest first; only
// the active ones if active.
func (s *Bolt) Rollouts(group string, active bool) ([]Rollout, error) {
	var out []Rollout
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRollouts)
		if b == nil { // a file opened read-only from before rollouts
			return nil
		}
		c := b.Cursor()
		for k, raw := c.Last(); k != nil; k, raw = c.Prev() {
			var ro Rollout
			if err := decode(raw, &ro); err != nil {
				return fmt.Errorf("%w: rollout record % x is corrupt: %w", ErrUnavailable, k, err)
			}
			if (group == "" || ro.Group == group) && (!active || ro.State.Active()) {
				out = append(out, ro)
			}
		}
		return nil
	})
	return out, err
}

// HeldMembers calls fn with each member of a group a rollout holds.
func (s *Bolt) HeldMembers(group string, fn func(serial string) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return eachUnder(tx.Bucket(bucketHolds), []byte(group+"\x00"), func(serial []byte) error { return fn(string(serial)) })
	})
}

// WaveStates calls fn with each member a rollout's wave released.
func (s *Bolt) WaveStates(id uint64, wave int, fn func(MemberState) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return eachUnder(tx.Bucket(bucketRolloutWaves), waveKey(id, wave, ""), memberStates(tx, fn))
	})
}

// releaseGroup removes every hold of a group (a plain change of its data
// moves every member to it).
func releaseGroup(tx *bolt.Tx, group string) error {
	b := tx.Bucket(bucketHolds)
	prefix := []byte(group + "\x00")
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}
