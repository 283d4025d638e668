package store

import (
	"fmt"
	"maps"

	bolt "go.etcd.io/bbolt"
)

// EnsureGroup creates a group with its initial data if it does not exist;
// an existing group is returned as it is (the store, not the
// configuration, holds its current data).
func (s *Bolt) EnsureGroup(name string, data map[string]string, actor string) (g *Group, created bool, err error) {
	err = s.update("ensure group", func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGroups)
		g = &Group{}
		found, err := getRecord(b, name, g)
		if err != nil || found {
			return err
		}
		now := s.stamp()
		g = &Group{Name: name, Data: maps.Clone(data), Version: 0, VersionAt: now, CreatedAt: now}
		created = true
		if err := putRecord(b, name, g); err != nil {
			return err
		}
		return audit(tx, Event{At: now, Actor: actor, Subject: "group/" + name, Action: "create", Detail: Change{Set: data}.Detail()})
	})
	return g, created, err
}

// Group returns a group.
func (s *Bolt) Group(name string) (*Group, error) {
	var g Group
	err := s.db.View(func(tx *bolt.Tx) error {
		found, err := getRecord(tx.Bucket(bucketGroups), name, &g)
		if err == nil && !found {
			err = fmt.Errorf("group %s: %w", name, ErrNotFound)
		}
		return err
	})
	return &g, err
}

// deviceGroup reads the group a device names. Registration refuses an
// unknown group and groups are never deleted, so a missing one is a
// damaged store.
func deviceGroup(tx *bolt.Tx, serial, name string) (*Group, error) {
	g := &Group{}
	found, err := getRecord(tx.Bucket(bucketGroups), name, g)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: device %s names group %q, which is missing", ErrUnavailable, serial, name)
	}
	return g, nil
}

// cachedGroup is a group from the read path's cache, or nil.
func (s *Bolt) cachedGroup(name string) *Group {
	s.groupsMu.RLock()
	defer s.groupsMu.RUnlock()
	return s.groups[name]
}

// cacheGroup keeps the newest version of a group.
func (s *Bolt) cacheGroup(g *Group) {
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	if old := s.groups[g.Name]; old == nil || old.Version <= g.Version {
		s.groups[g.Name] = g
	}
}

// GroupMembers calls fn with the serial of each device of a group.
func (s *Bolt) GroupMembers(group string, fn func(serial string) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return eachUnder(tx.Bucket(bucketMembers), []byte(group+"\x00"), func(serial []byte) error { return fn(string(serial)) })
	})
}

// eachUnder calls fn with the rest of each key of b that starts with
// prefix (and is longer), in key order; a missing bucket (a file opened
// read-only from before it existed) has none.
func eachUnder(b *bolt.Bucket, prefix []byte, fn func(rest []byte) error) error {
	if b == nil {
		return nil
	}
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Next() {
		if err := fn(k[len(prefix):]); err != nil {
			return err
		}
	}
	return nil
}

// SetGroupData changes a group's mutable data if its version is still
// ifVersion (else ErrConflict); every device of the group moves to a new
// generation. check validates the group's data as it would be.
func (s *Bolt) SetGroupData(name string, ifVersion uint64, c Change, actor string, check func(*Group) error) (*Group, error) {
	var g Group
	err := s.update("set group data", func(tx *bolt.Tx) error {
		found, err := getRecord(tx.Bucket(bucketGroups), name, &g)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w %q", ErrUnknownGroup, name)
		}
		if g.Rollout != 0 {
			return fmt.Errorf("group %s: rollout %d: %w", name, g.Rollout, ErrRolloutActive)
		}
		if g.Version != ifVersion {
			return fmt.Errorf("group %s is at version %d, not %d: %w", name, g.Version, ifVersion, ErrConflict)
		}
		// A plain change moves every member to it, held ones too.
		if err := releaseGroup(tx, name); err != nil {
			return err
		}
		g.Data = c.Apply(g.Data)
		if err := check(&g); err != nil {
			return err
		}
		now := s.stamp()
		g.Version++
		g.VersionAt = now
		if err := putRecord(tx.Bucket(bucketGroups), name, &g); err != nil {
			return err
		}
		return audit(tx, Event{At: now, Actor: actor, Subject: "group/" + name, Action: "set data", Detail: c.Detail()})
	})
	if err != nil {
		return nil, err
	}
	s.cacheGroup(&g)
	return &g, nil
}
