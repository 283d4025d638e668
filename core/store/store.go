// Package store is core's device registry on bbolt: devices with their
// frozen immutable data, mutable data per device and per group, status,
// certificates seen and an audit trail of every change with who made it.
//
// Every write is one bbolt transaction, fsynced before it returns, so what
// a caller acknowledges is durable and a crash leaves the previous or the
// next consistent state. Registrations and certificate records go through
// a group committer (group.go) so a burst of them shares commits instead of
// paying one fsync each, without making a lone registration wait for a
// timer, and are prepared outside the single writer (prepare.go). Records
// are stored compressed (codec.go).
//
// A device's generation is its own version plus its group's version. Both
// only grow, so the sum does; a change to a group's data is one write, not
// one per device, and every device of the group moves to a new generation.
package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/fleetprov/prov/core/contract/hwid"
)

// Errors.
var (
	ErrNotFound     = errors.New("not found")
	ErrCollision    = errors.New("another hardware ID already has this serial")
	ErrConflict     = errors.New("changed since the version given")
	ErrUnknownGroup = errors.New("unknown group")
	ErrRevoked      = errors.New("device is revoked")
	ErrLocked       = errors.New("store is locked by another process")
	// ErrUnavailable wraps failures of the disk or the database itself
	// (full disk, I/O error): the caller may retry later.
	ErrUnavailable = errors.New("store unavailable")
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

// Status of a device.
type Status string

// Statuses.
const (
	Active  Status = "active"
	Revoked Status = "revoked"
)

// Immutable is what a device gets once, at registration, and keeps.
type Immutable struct {
	Hostname     string `json:"hostname"`
	MachineID    string `json:"machineId,omitempty"`
	MQTTClientID string `json:"mqttClientId"`
	MQTTGroupID  string `json:"mqttGroupId"`
}

// Certificate is a client certificate a device was seen with.
type Certificate struct {
	Fingerprint string    `json:"fingerprint"` // SHA-256 of the DER, hex
	Serial      string    `json:"serial"`      // decimal, as step-ca writes it
	NotAfter    time.Time `json:"notAfter"`
	FirstSeen   time.Time `json:"firstSeen"`
}

// MaxCertificates bounds the certificates remembered per device.
const MaxCertificates = 16

// Issued is a certificate a proxy had issued for a device at enrollment.
type Issued struct {
	Serial    string    `json:"serial"`    // the certificate's, decimal
	KeySHA256 string    `json:"keySha256"` // SHA-256 of its SubjectPublicKeyInfo, hex
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	IssuedBy  string    `json:"issuedBy"` // the proxy's identity
}

// Device is a registry record.
type Device struct {
	Serial       string            `json:"serial"`
	Board        string            `json:"board"`
	HardwareID   string            `json:"hardwareId"` // canonical
	Group        string            `json:"group"`
	Immutable    Immutable         `json:"immutable"`
	Data         map[string]string `json:"data,omitempty"` // the device's own mutable data
	Version      uint64            `json:"version"`
	VersionAt    time.Time         `json:"versionAt"`
	Status       Status            `json:"status"`
	Certificates []Certificate     `json:"certificates,omitempty"`
	Issued       []Issued          `json:"issued,omitempty"`
	RegisteredBy string            `json:"registeredBy"`
	CreatedAt    time.Time         `json:"createdAt"`
	UpdatedAt    time.Time         `json:"updatedAt"`
}

// Group is a device group's mutable data.
type Group struct {
	Name      string            `json:"name"`
	Data      map[string]string `json:"data,omitempty"`
	Version   uint64            `json:"version"`
	VersionAt time.Time         `json:"versionAt"`
	CreatedAt time.Time         `json:"createdAt"`
}

// View is a device with its group: what its image is built from.
type View struct {
	Device
	GroupVersion   uint64
	GroupVersionAt time.Time
	GroupData      map[string]string
}

// Generation is the device's image generation.
func (v *View) Generation() uint64 { return v.Version + v.GroupVersion }

// IssuedAt is when the current generation was made.
func (v *View) IssuedAt() time.Time {
	if v.GroupVersionAt.After(v.VersionAt) {
		return v.GroupVersionAt
	}
	return v.VersionAt
}

// EffectiveData is the group's data overlaid with the device's own.
func (v *View) EffectiveData() map[string]string {
	out := maps.Clone(v.GroupData)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, v.Data)
	return out
}

// Event is one audit record.
type Event struct {
	Seq        uint64            `json:"seq,omitempty"` // stored in the key, not the value
	At         time.Time         `json:"at"`
	Actor      string            `json:"actor"`
	Subject    string            `json:"subject,omitempty"` // device/<serial> or group/<name>; in the key
	Action     string            `json:"action"`
	Generation uint64            `json:"generation,omitempty"`
	Detail     map[string]string `json:"detail,omitempty"`
}

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
}

// Store is the registry.
type Store struct {
	db     *bolt.DB
	now    func() time.Time
	before func(op string) error

	// groups caches decoded group records for the read path (serving a
	// bundle reads one device and its group; there are few groups, read on
	// every request). Writes read groups from their transaction and update
	// this after they commit.
	groupsMu sync.RWMutex
	groups   map[string]*Group
	devices  *deviceCache
	group    *groupCommit
}

// Open opens (creating if needed) the registry at path.
func Open(path string, opts Options) (*Store, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	// The hashmap freelist: finding free pages for a commit does not scan
	// the whole free list, as the array type does, and a store of a million
	// devices rewritten page by page keeps a long one (etcd runs it too).
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, FreelistType: bolt.FreelistMapType})
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
	s := &Store{db: db, now: opts.Now, before: opts.BeforeCommit, groups: map[string]*Group{}, devices: newDeviceCache(opts.CacheDevices),
		group: &groupCommit{db: db, before: opts.BeforeCommit, max: opts.BatchSize}}
	if s.now == nil {
		s.now = time.Now
	}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return s, nil
}

func (s *Store) init() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketHWIDs, bucketGroups, bucketMembers, bucketAudit, bucketMeta} {
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

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file.
func (s *Store) Path() string { return s.db.Path() }

// Check runs bbolt's consistency check.
func (s *Store) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
}

func (s *Store) stamp() time.Time { return s.now().UTC().Truncate(time.Second) }

// update runs fn in a write transaction, with the fault-injection seam, and
// marks disk and database failures ErrUnavailable.
func (s *Store) update(op string, fn func(tx *bolt.Tx) error) error {
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

// batch is update through the group committer: concurrent calls share one
// commit. fn may run more than once (when another call of its batch
// fails), so it must only depend on the transaction.
func (s *Store) batch(op string, fn func(tx *bolt.Tx) error) error {
	return s.group.do(op, fn)
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

// EnsureGroup creates a group with its initial data if it does not exist;
// an existing group is returned as it is (the store, not the
// configuration, holds its current data).
func (s *Store) EnsureGroup(name string, data map[string]string, actor string) (g *Group, created bool, err error) {
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
		return audit(tx, Event{At: now, Actor: actor, Subject: "group/" + name, Action: "create", Detail: keysOf(data)})
	})
	return g, created, err
}

// Registration asks for a device record.
type Registration struct {
	ID        hwid.ID
	Group     string
	Immutable Immutable
	Actor     string // the proxy's identity
}

// Register creates the record of a hardware ID, or returns the existing one
// unchanged (idempotent: immutable data is never recomputed). A different
// hardware ID with the same serial is ErrCollision and changes nothing.
func (s *Store) Register(r Registration) (v *View, created bool, err error) {
	for range maxOptimistic {
		v, created, err = s.registerPrepared(r)
		if !errors.Is(err, errStale) {
			return v, created, err
		}
	}
	// Contended (the group keeps changing): do it all in the writer.
	txid := 0
	err = s.update("register", func(tx *bolt.Tx) error {
		txid = tx.ID()
		var g Group
		existing, err := registrationState(tx, r, &g)
		if err != nil || existing != "" {
			created = false
			v, err = viewOr(tx, existing, err)
			return err
		}
		d, ev := s.newDevice(r, &g)
		if err := putRecord(tx.Bucket(bucketDevices), d.Serial, d); err != nil {
			return err
		}
		if err := putIndexes(tx, r, d.Serial); err != nil {
			return err
		}
		v, created = &View{Device: *d, GroupVersion: g.Version, GroupVersionAt: g.VersionAt, GroupData: g.Data}, true
		return audit(tx, *ev)
	})
	if err != nil {
		return nil, false, err
	}
	if created {
		d := v.Device
		s.devices.put(v.Serial, txid, &d)
	}
	return v, created, nil
}

// registerPrepared is Register with the record prepared outside the
// writer (prepare.go); errStale when the group changed meanwhile or the
// hardware ID was registered by another call.
func (s *Store) registerPrepared(r Registration) (*View, bool, error) {
	var g Group
	var groupBase []byte
	var existing string
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if existing, err = registrationState(tx, r, &g); err != nil || existing != "" {
			return err
		}
		groupBase = bytes.Clone(tx.Bucket(bucketGroups).Get([]byte(r.Group)))
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	if existing != "" {
		v, err := s.Device(existing)
		return v, false, err
	}
	d, ev := s.newDevice(r, &g)
	record, err := encode(d)
	if err != nil {
		return nil, false, err
	}
	event, err := encodeEvent(*ev)
	if err != nil {
		return nil, false, err
	}
	txid := 0
	err = s.batch("register", func(tx *bolt.Tx) error {
		txid = tx.ID()
		if tx.Bucket(bucketHWIDs).Get([]byte(r.ID.Key())) != nil || !bytes.Equal(tx.Bucket(bucketGroups).Get([]byte(r.Group)), groupBase) {
			return errStale
		}
		if tx.Bucket(bucketDevices).Get([]byte(d.Serial)) != nil {
			return fmt.Errorf("%w: serial %s (hardware ID %s)", ErrCollision, d.Serial, r.ID.Key())
		}
		if err := tx.Bucket(bucketDevices).Put([]byte(d.Serial), record); err != nil {
			return err
		}
		if err := putIndexes(tx, r, d.Serial); err != nil {
			return err
		}
		return putEvent(tx, ev.Subject, event)
	})
	if err != nil {
		return nil, false, err
	}
	stored := *d
	s.devices.put(d.Serial, txid, &stored)
	return &View{Device: *d, GroupVersion: g.Version, GroupVersionAt: g.VersionAt, GroupData: g.Data}, true, nil
}

// registrationState reads what a registration depends on: the serial the
// hardware ID already has (if any), else its group into g; a serial taken
// by another hardware ID is ErrCollision.
func registrationState(tx *bolt.Tx, r Registration, g *Group) (existing string, err error) {
	if e := tx.Bucket(bucketHWIDs).Get([]byte(r.ID.Key())); e != nil {
		return string(e), nil
	}
	serial := r.ID.Serial()
	if tx.Bucket(bucketDevices).Get([]byte(serial)) != nil {
		return "", fmt.Errorf("%w: serial %s (hardware ID %s)", ErrCollision, serial, r.ID.Key())
	}
	found, err := getRecord(tx.Bucket(bucketGroups), r.Group, g)
	if err != nil {
		return "", err
	}
	if !found {
		return "", fmt.Errorf("%w %q", ErrUnknownGroup, r.Group)
	}
	return "", nil
}

func viewOr(tx *bolt.Tx, serial string, err error) (*View, error) {
	if err != nil {
		return nil, err
	}
	return view(tx, serial)
}

// newDevice is a registration's new record and its audit event.
func (s *Store) newDevice(r Registration, g *Group) (*Device, *Event) {
	now := s.stamp()
	serial := r.ID.Serial()
	d := &Device{
		Serial: serial, Board: r.ID.Board, HardwareID: r.ID.Canonical, Group: r.Group,
		Immutable: r.Immutable, Version: 1, VersionAt: now, Status: Active,
		RegisteredBy: r.Actor, CreatedAt: now, UpdatedAt: now,
	}
	return d, &Event{At: now, Actor: r.Actor, Subject: "device/" + serial, Action: "register", Generation: d.Version + g.Version,
		Detail: map[string]string{"board": r.ID.Board, "group": r.Group, "hostname": r.Immutable.Hostname}}
}

func putIndexes(tx *bolt.Tx, r Registration, serial string) error {
	if err := tx.Bucket(bucketHWIDs).Put([]byte(r.ID.Key()), []byte(serial)); err != nil {
		return err
	}
	return tx.Bucket(bucketMembers).Put([]byte(r.Group+"\x00"+serial), nil)
}

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

func view(tx *bolt.Tx, serial string) (*View, error) {
	d, err := device(tx, serial)
	if err != nil {
		return nil, err
	}
	var g Group
	found, err := getRecord(tx.Bucket(bucketGroups), d.Group, &g)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w: device %s names group %q, which is missing", ErrUnavailable, serial, d.Group)
	}
	return &View{Device: *d, GroupVersion: g.Version, GroupVersionAt: g.VersionAt, GroupData: g.Data}, nil
}

// Device returns a device and its group.
func (s *Store) Device(serial string) (*View, error) {
	if d, ok := s.devices.get(serial); ok {
		s.groupsMu.RLock()
		g := s.groups[d.Group]
		s.groupsMu.RUnlock()
		if g != nil {
			return &View{Device: *d, GroupVersion: g.Version, GroupVersionAt: g.VersionAt, GroupData: g.Data}, nil
		}
	}
	var d Device
	var g *Group
	err := s.db.View(func(tx *bolt.Tx) error {
		found, err := getRecord(tx.Bucket(bucketDevices), serial, &d)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("device %s: %w", serial, ErrNotFound)
		}
		dc := d
		s.devices.put(serial, tx.ID(), &dc)
		s.groupsMu.RLock()
		g = s.groups[d.Group]
		s.groupsMu.RUnlock()
		if g != nil {
			return nil
		}
		g = &Group{}
		found, err = getRecord(tx.Bucket(bucketGroups), d.Group, g)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: device %s names group %q, which is missing", ErrUnavailable, serial, d.Group)
		}
		s.cacheGroup(g)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &View{Device: d, GroupVersion: g.Version, GroupVersionAt: g.VersionAt, GroupData: g.Data}, nil
}

// withGroup is a device's view with its group as it is now.
func (s *Store) withGroup(d *Device) (*View, error) {
	s.groupsMu.RLock()
	g := s.groups[d.Group]
	s.groupsMu.RUnlock()
	if g == nil {
		var err error
		if g, err = s.Group(d.Group); err != nil {
			return nil, fmt.Errorf("device %s: %w", d.Serial, err)
		}
	}
	return &View{Device: *d, GroupVersion: g.Version, GroupVersionAt: g.VersionAt, GroupData: g.Data}, nil
}

// cacheGroup keeps the newest version of a group.
func (s *Store) cacheGroup(g *Group) {
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	if old := s.groups[g.Name]; old == nil || old.Version <= g.Version {
		s.groups[g.Name] = g
	}
}

// Group returns a group.
func (s *Store) Group(name string) (*Group, error) {
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

// List returns up to limit devices with serials after cursor, in serial
// order, and the cursor of the next page ("" at the end).
func (s *Store) List(cursor string, limit int) ([]View, string, error) {
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

// GroupMembers calls fn with the serial of each device of a group.
func (s *Store) GroupMembers(group string, fn func(serial string) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(group + "\x00")
		c := tx.Bucket(bucketMembers).Cursor()
		for k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Next() {
			if err := fn(string(k[len(prefix):])); err != nil {
				return err
			}
		}
		return nil
	})
}

// Change is a change of mutable data: keys to set and keys to remove.
type Change struct {
	Set   map[string]string
	Unset []string
}

func (c Change) apply(data map[string]string) map[string]string {
	out := maps.Clone(data)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, c.Set)
	for _, k := range c.Unset {
		delete(out, k)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func (c Change) detail() map[string]string {
	d := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(c.Set)) {
		d["set "+k] = fmt.Sprintf("%d bytes", len(c.Set[k]))
	}
	for _, k := range c.Unset {
		d["unset "+k] = ""
	}
	return d
}

// SetDeviceData changes a device's own mutable data if its generation is
// still ifGeneration (else ErrConflict). check validates the device as it
// would be; an error from it aborts the change.
func (s *Store) SetDeviceData(serial string, ifGeneration uint64, c Change, actor string, check func(*View) error) (*View, error) {
	return s.changeDevice(serial, "set data", actor, func(v *View) (map[string]string, error) {
		if v.Generation() != ifGeneration {
			return nil, fmt.Errorf("device %s is at generation %d, not %d: %w", serial, v.Generation(), ifGeneration, ErrConflict)
		}
		v.Data = c.apply(v.Data)
		if err := check(v); err != nil {
			return nil, err
		}
		return c.detail(), nil
	})
}

// Reprovision moves a device to a new generation with the same data.
func (s *Store) Reprovision(serial, actor string) (*View, error) {
	return s.changeDevice(serial, "reprovision", actor, func(*View) (map[string]string, error) { return nil, nil })
}

func (s *Store) changeDevice(serial, action, actor string, fn func(*View) (map[string]string, error)) (*View, error) {
	var v *View
	txid := 0
	err := s.update(action, func(tx *bolt.Tx) error {
		txid = tx.ID()
		var err error
		if v, err = view(tx, serial); err != nil {
			return err
		}
		if v.Status == Revoked {
			return fmt.Errorf("device %s: %w", serial, ErrRevoked)
		}
		detail, err := fn(v)
		if err != nil {
			return err
		}
		now := s.stamp()
		v.Version++
		v.VersionAt, v.UpdatedAt = now, now
		if err := putRecord(tx.Bucket(bucketDevices), serial, &v.Device); err != nil {
			return err
		}
		return audit(tx, Event{At: now, Actor: actor, Subject: "device/" + serial, Action: action, Generation: v.Generation(), Detail: detail})
	})
	if err != nil {
		return nil, err
	}
	d := v.Device
	s.devices.put(serial, txid, &d)
	return v, nil
}

// SetGroupData changes a group's mutable data if its version is still
// ifVersion (else ErrConflict); every device of the group moves to a new
// generation. check validates the group's data as it would be.
func (s *Store) SetGroupData(name string, ifVersion uint64, c Change, actor string, check func(*Group) error) (*Group, error) {
	var g Group
	err := s.update("set group data", func(tx *bolt.Tx) error {
		found, err := getRecord(tx.Bucket(bucketGroups), name, &g)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w %q", ErrUnknownGroup, name)
		}
		if g.Version != ifVersion {
			return fmt.Errorf("group %s is at version %d, not %d: %w", name, g.Version, ifVersion, ErrConflict)
		}
		g.Data = c.apply(g.Data)
		if err := check(&g); err != nil {
			return err
		}
		now := s.stamp()
		g.Version++
		g.VersionAt = now
		if err := putRecord(tx.Bucket(bucketGroups), name, &g); err != nil {
			return err
		}
		return audit(tx, Event{At: now, Actor: actor, Subject: "group/" + name, Action: "set data", Detail: c.detail()})
	})
	if err != nil {
		return nil, err
	}
	s.cacheGroup(&g)
	return &g, nil
}

// Revoke marks a device revoked: core refuses it from now on.
func (s *Store) Revoke(serial, actor, reason string) (*View, error) {
	var v *View
	txid := 0
	err := s.update("revoke", func(tx *bolt.Tx) error {
		txid = tx.ID()
		var err error
		if v, err = view(tx, serial); err != nil {
			return err
		}
		if v.Status == Revoked {
			return nil // idempotent
		}
		now := s.stamp()
		v.Status, v.UpdatedAt = Revoked, now
		if err := putRecord(tx.Bucket(bucketDevices), serial, &v.Device); err != nil {
			return err
		}
		return audit(tx, Event{At: now, Actor: actor, Subject: "device/" + serial, Action: "revoke", Detail: map[string]string{"reason": reason}})
	})
	if err != nil {
		return nil, err
	}
	d := v.Device
	s.devices.put(serial, txid, &d)
	return v, nil
}

// SeenCertificate remembers a certificate a device used, once. Callers
// that hold the device check HasCertificate first; this checks again
// inside its transaction.
func (s *Store) SeenCertificate(serial string, c Certificate) error {
	_, err := s.modifyDevice("certificate seen", serial, func(d *Device) (*Event, error) {
		if d.HasCertificate(c.Fingerprint) {
			return nil, nil
		}
		now := s.stamp()
		c.FirstSeen = now
		d.Certificates = append(d.Certificates, c)
		if len(d.Certificates) > MaxCertificates {
			d.Certificates = d.Certificates[len(d.Certificates)-MaxCertificates:]
		}
		d.UpdatedAt = now
		return &Event{At: now, Actor: "device/" + serial, Subject: "device/" + serial, Action: "certificate seen",
			Detail: map[string]string{"serial": c.Serial, "fingerprint": c.Fingerprint}}, nil
	})
	return err
}

// RecordIssued remembers a certificate a proxy had issued for the device
// (the last MaxCertificates of them), for the re-enrollment policy.
func (s *Store) RecordIssued(serial string, c Issued) (*View, error) {
	d, err := s.modifyDevice("certificate issued", serial, func(d *Device) (*Event, error) {
		if slices.ContainsFunc(d.Issued, func(x Issued) bool { return x.Serial == c.Serial }) {
			return nil, nil
		}
		now := s.stamp()
		d.Issued = append(d.Issued, c)
		if len(d.Issued) > MaxCertificates {
			d.Issued = d.Issued[len(d.Issued)-MaxCertificates:]
		}
		d.UpdatedAt = now
		return &Event{At: now, Actor: c.IssuedBy, Subject: "device/" + serial, Action: "certificate issued",
			Detail: map[string]string{"serial": c.Serial, "key": c.KeySHA256, "notAfter": c.NotAfter.UTC().Format(time.RFC3339)}}, nil
	})
	if err != nil {
		return nil, err
	}
	return s.withGroup(d)
}

// HasCertificate reports whether the device was already seen with a
// certificate of that fingerprint.
func (d *Device) HasCertificate(fingerprint string) bool {
	return slices.ContainsFunc(d.Certificates, func(x Certificate) bool { return x.Fingerprint == fingerprint })
}

// Audit returns up to limit events of a subject (device/<serial> or
// group/<name>), oldest first, after sequence number after.
func (s *Store) Audit(subject string, after uint64, limit int) ([]Event, error) {
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(subject + "\x00")
		c := tx.Bucket(bucketAudit).Cursor()
		start := append(append([]byte{}, prefix...), binary.BigEndian.AppendUint64(nil, after+1)...)
		for k, raw := c.Seek(start); k != nil && len(k) == len(prefix)+8 && string(k[:len(prefix)]) == string(prefix); k, raw = c.Next() {
			var e Event
			seq := binary.BigEndian.Uint64(k[len(prefix):])
			if err := decode(raw, &e); err != nil {
				return fmt.Errorf("%w: audit record %d of %s is corrupt: %w", ErrUnavailable, seq, subject, err)
			}
			e.Seq, e.Subject = seq, subject
			out = append(out, e)
			if len(out) == limit {
				return nil
			}
		}
		return nil
	})
	return out, err
}

func keysOf(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	d := map[string]string{}
	for k, v := range m {
		d["set "+k] = fmt.Sprintf("%d bytes", len(v))
	}
	return d
}

// BackupInfo describes a backup before its bytes.
type BackupInfo struct {
	Size    int64
	Devices int
	Groups  int
}

// Backup writes a consistent copy of the whole store to w (one read
// transaction: writers go on meanwhile); before the first byte it tells
// start its size and contents. The copy is a bbolt file: restore it by
// putting it in place of the store's file while core is stopped.
func (s *Store) Backup(w io.Writer, start func(BackupInfo)) error {
	err := s.db.View(func(tx *bolt.Tx) error {
		info := BackupInfo{Size: tx.Size(), Devices: tx.Bucket(bucketDevices).Stats().KeyN, Groups: tx.Bucket(bucketGroups).Stats().KeyN}
		if start != nil {
			start(info)
		}
		_, err := tx.WriteTo(w)
		return err
	})
	if err != nil {
		return fmt.Errorf("store backup: %w", err)
	}
	return nil
}
