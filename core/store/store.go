// Package store is core's device registry: its contract (Store, contract.go),
// its records and errors, and its embedded engine on bbolt (Bolt): devices with their
// frozen immutable data, mutable data per device and per group, status,
// certificates issued (whose keys core accepts) and seen, an audit trail of
// every change with who made it, and the queue of certificates to revoke
// at the CA (carevoke.go).
//
// Every write is one bbolt transaction, fsynced before it returns, so what
// a caller acknowledges is durable and a crash leaves the previous or the
// next consistent state. Registrations and certificate records go through
// a group committer (groupcommit.go; "group" as in group commit, nothing to
// do with device groups) so a burst of them shares commits instead of
// paying one fsync each, without making a lone registration wait for a
// timer, and are prepared outside the single writer (prepare.go). Records
// are stored compressed (codec.go).
//
// A device's generation is its own version plus its group's version. Both
// only grow, so the sum does; a change to a group's data is one write, not
// one per device, and every device of the group moves to a new generation.
package store

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var (
	bucketDevices = []byte("devices")      // serial -> Device
	bucketHWIDs   = []byte("hwids")        // hwid.ID.Key() -> serial
	bucketGroups  = []byte("groups")       // name -> Group
	bucketMembers = []byte("groupmembers") // group 0x00 serial -> nil
	bucketAudit   = []byte("audit")        // subject 0x00 seq -> Event
	bucketMeta    = []byte("meta")
	keySchema     = []byte("schema")
)

const schemaVersion = 1

// Options of Open.
type Options struct {
	// LockTimeout is how long to wait for another process's lock on the
	// file; zero means 1 s.
	LockTimeout time.Duration
	// BatchSize bounds the registrations committed together; zero means
	// 1000.
	BatchSize int
	// Now is the clock; nil means time.Now. A test seam.
	Now func() time.Time
	// BeforeCommit, if set, runs inside every write transaction after its
	// writes; an error aborts the transaction as a failing disk would. A
	// test seam for fault injection.
	BeforeCommit func(op string) error
	// CacheDevices bounds the decoded device records kept in memory for
	// reads; zero means 100,000, negative turns the cache off.
	CacheDevices int
	// PruneBatch bounds the events one transaction of an audit prune
	// removes; zero means PruneBatch. A test seam.
	PruneBatch int
	// ReadOnly opens an existing file for reading only (store migrate
	// copies from it): nothing is created or written, and the file is
	// locked against writers (a running core) but not other readers.
	ReadOnly bool
}

// Bolt is the registry on one bbolt file: the embedded engine, the default.
type Bolt struct {
	db     *bolt.DB
	now    func() time.Time
	before func(op string) error

	// groups caches decoded group records for the read path (serving a
	// bundle reads one device and its group; there are few groups, read on
	// every request). Writes read groups from their transaction and update
	// this after they commit.
	groupsMu  sync.RWMutex
	groups    map[string]*Group
	devices   *deviceCache
	held      heldGroups
	committer *groupCommitter
	pruning   sync.Mutex // one audit prune at a time (prune.go)
	pruneMax  int
}

// Open opens (creating if needed) the registry at path.
func Open(path string, opts Options) (*Bolt, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	// The hashmap freelist: finding free pages for a commit does not scan
	// the whole free list, as the array type does, and a store of a million
	// devices rewritten page by page keeps a long one (etcd runs it too).
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, FreelistType: bolt.FreelistMapType, ReadOnly: opts.ReadOnly})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s: another prov-core (or a backup tool) holds it", ErrLocked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	if opts.CacheDevices == 0 {
		opts.CacheDevices = 100_000
	}
	s := &Bolt{db: db, now: opts.Now, before: opts.BeforeCommit, groups: map[string]*Group{}, devices: newDeviceCache(opts.CacheDevices),
		held:      heldGroups{m: map[string]bool{}},
		committer: &groupCommitter{db: db, before: opts.BeforeCommit, max: opts.BatchSize}}
	if s.now == nil {
		s.now = time.Now
	}
	s.pruneMax = cmp.Or(opts.PruneBatch, PruneBatch)
	initialize := s.init
	if opts.ReadOnly {
		initialize = s.checkSchema
	}
	if err := initialize(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	_ = db.View(func(tx *bolt.Tx) error { loadHeldGroups(tx, &s.held); return nil }) //nolint:errcheck // the function returns nil
	return s, nil
}

func (s *Bolt) init() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		// Buckets added since schema 1 (reports, rollouts) are created
		// in a file that lacks them; a read-only open reads them as empty.
		for _, b := range [][]byte{bucketDevices, bucketHWIDs, bucketGroups, bucketMembers, bucketAudit, bucketMeta, bucketCARevocations,
			bucketReports, bucketHolds, bucketGroupVersions, bucketRollouts, bucketRolloutWaves} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keySchema); v != nil {
			if got := binary.BigEndian.Uint64(v); got != schemaVersion {
				return fmt.Errorf("schema version %d, this core reads %d", got, schemaVersion)
			}
			return nil
		}
		return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, schemaVersion))
	})
}

// checkSchema is init for a file opened read-only: it must be a registry
// this core reads.
func (s *Bolt) checkSchema() error {
	return s.db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketHWIDs, bucketGroups, bucketMembers, bucketAudit, bucketMeta, bucketCARevocations} {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("not a registry: no bucket %q", b)
			}
		}
		if v := tx.Bucket(bucketMeta).Get(keySchema); len(v) != 8 || binary.BigEndian.Uint64(v) != schemaVersion {
			return fmt.Errorf("schema version % x, this core reads %d", v, schemaVersion)
		}
		return nil
	})
}

// Close closes the database.
func (s *Bolt) Close() error { return s.db.Close() }

// Path is the database file.
func (s *Bolt) Path() string { return s.db.Path() }

// Check runs bbolt's consistency check.
func (s *Bolt) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
}

func (s *Bolt) stamp() time.Time { return s.now().UTC().Truncate(time.Second) }

// update runs fn in a write transaction, with the fault-injection seam, and
// marks disk and database failures ErrUnavailable.
func (s *Bolt) update(op string, fn func(tx *bolt.Tx) error) error {
	var fnErr error
	err := s.db.Update(func(tx *bolt.Tx) error {
		if fnErr = fn(tx); fnErr != nil {
			return fnErr
		}
		if s.before != nil {
			if err := s.before(op); err != nil {
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
		}
		return nil
	})
	return classify(op, err, fnErr)
}

// updateDevice is update for a write of one device's record: fn returns
// the device as it left it in the transaction (nil when it wrote none),
// which is cached as of that transaction once it has committed.
func (s *Bolt) updateDevice(op, serial string, fn func(tx *bolt.Tx) (*Device, error)) error {
	var d *Device
	txid := 0
	err := s.update(op, func(tx *bolt.Tx) error {
		txid = tx.ID()
		var err error
		d, err = fn(tx)
		return err
	})
	if err != nil {
		return err
	}
	if d != nil {
		stored := *d
		s.devices.put(serial, txid, &stored)
	}
	return nil
}

// batch is update through the group committer: concurrent calls share one
// commit. fn may run more than once (when another call of its batch
// fails), so it must only depend on the transaction.
func (s *Bolt) batch(op string, fn func(tx *bolt.Tx) error) error {
	return s.committer.do(op, fn)
}

// classify: an error from our own function is returned as is; anything
// else came from bbolt or the disk, and is ErrUnavailable.
func classify(op string, err, fnErr error) error {
	switch {
	case err == nil:
		return nil
	case fnErr != nil && errors.Is(err, fnErr):
		return err
	case errors.Is(err, ErrUnavailable):
		return fmt.Errorf("%s: %w", op, err)
	default:
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	}
}

func getRecord(b *bolt.Bucket, key string, v any) (bool, error) {
	raw := b.Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	if err := decode(raw, v); err != nil {
		return true, fmt.Errorf("%w: record %q is corrupt: %w", ErrUnavailable, key, err)
	}
	return true, nil
}

func putRecord(b *bolt.Bucket, key string, v any) error {
	raw, err := encode(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}
