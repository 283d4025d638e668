package store

import (
	"context"
	"io"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// Store is the registry's contract: what core/registry and core/notify
// need of it, whatever engine holds the records. Two engines implement it:
// Bolt (one bbolt file, this package; the embedded default) and
// core/store/postgres (one PostgreSQL database that several cores can
// share). Both pass the same test suite (store_test.go).
//
// What every engine guarantees:
//   - A method that returns without error has made its change durable.
//   - Registering a hardware ID is idempotent, and one serial belongs to one
//     hardware ID (ErrCollision), decided by the engine's single writer or
//     by a constraint, never by a read followed by a write.
//   - Every data change is checked against the version the caller read
//     (If-Match: ErrConflict), in the statement or transaction that writes.
//   - A device's generation (its version plus its group's) only grows.
//   - Failures of the disk or the database are ErrUnavailable; every error
//     a caller acts on is a sentinel of errors.go, matched with errors.Is.
type Store interface {
	// Register creates the record of a hardware ID, or returns the
	// existing one unchanged (created false).
	Register(r Registration) (v *View, created bool, err error)
	// Device returns a device with its group; ErrNotFound.
	Device(serial string) (*View, error)
	// List pages through devices in serial order after cursor; next is ""
	// at the end.
	List(cursor string, limit int) (page []View, next string, err error)
	// SetDeviceData changes a device's own data if its generation is still
	// ifGeneration; check validates the device as it would be.
	SetDeviceData(serial string, ifGeneration uint64, c Change, actor string, check func(*View) error) (*View, error)
	// Reprovision moves an active device to a new generation.
	Reprovision(serial, actor string) (*View, error)
	// Revoke marks a device revoked and queues its certificates for
	// revocation at the CA, in one change.
	Revoke(serial, actor, reason string) (*View, error)

	// EnsureGroup creates a group unless it exists.
	EnsureGroup(name string, data map[string]string, actor string) (g *Group, created bool, err error)
	// Group returns a group; ErrNotFound.
	Group(name string) (*Group, error)
	// GroupMembers calls fn with each member's serial.
	GroupMembers(group string, fn func(serial string) error) error
	// SetGroupData changes a group's data if its version is still
	// ifVersion.
	SetGroupData(name string, ifVersion uint64, c Change, actor string, check func(*Group) error) (*Group, error)

	// SeenCertificate remembers a certificate a device used, once.
	SeenCertificate(serial string, c Certificate) error
	// RecordIssued remembers a certificate issued for a device.
	RecordIssued(serial string, c Issued) (*View, error)
	// PinFirstKey pins the first key of a device whose record predates
	// key pinning.
	PinFirstKey(serial string, c Issued) (v *View, pinned bool, err error)

	// PendingCARevocations are a device's certificates still to revoke at
	// the CA.
	PendingCARevocations(device string) ([]CARevocation, error)
	// CARevocations reads the queue of revocations at the CA as of now.
	CARevocations(now time.Time) (*CARevocationQueue, error)
	// CARevocationDone takes a confirmed entry off the queue.
	CARevocationDone(device, certSerial, outcome string) (bool, error)
	// CARevocationFailed records a failed attempt and the next one.
	CARevocationFailed(device, certSerial, errText string, next time.Time) error

	// Admit decides, in one write, on a proxy's request to enroll a
	// board (DecideAdmission) and reserves its place: ErrQuota,
	// ErrReenrollment or ErrAdmissionHeld refuse it.
	Admit(r AdmissionRequest) (*Admitted, error)
	// EndAdmission ends one admitted attempt: enrolled counts the serial
	// in its batch for good, otherwise the place is given back.
	EndAdmission(batch, serial, keySHA256 string, enrolled bool) error

	// SaveReport keeps a device's latest report (NextReport); its
	// transitions go to the device's audit trail. ErrNotFound.
	SaveReport(serial string, r coreapi.Report) (*Report, error)
	// Report is a device's latest report; nil if it never reported.
	Report(serial string) (*Report, error)
	// GroupStates calls fn with each member of a group, in serial order.
	GroupStates(group string, fn func(MemberState) error) error

	// StartRollout changes a group's data as a rollout that holds every
	// member at the data it had (rollouts.go); ErrRolloutActive.
	StartRollout(ro *Rollout, ifVersion uint64, c Change, actor string, check func(*Group) error) (*Rollout, *Group, error)
	// StepRollout stores a rollout's next state and releases members, in
	// one write; it returns the members it released.
	StepRollout(st RolloutStep) (*Rollout, []string, error)
	// AbortRollout ends a rollout by changing its group's data back, as a
	// new version.
	AbortRollout(next *Rollout, ifRev uint64, actor, reason string, check func(*Group) error) (*Rollout, *Group, error)
	// Rollout reads a rollout; ErrNotFound.
	Rollout(id uint64) (*Rollout, error)
	// Rollouts are a group's rollouts ("": every group's), newest first,
	// only the active ones if active.
	Rollouts(group string, active bool) ([]Rollout, error)
	// HeldMembers calls fn with each member of a group a rollout holds.
	HeldMembers(group string, fn func(serial string) error) error
	// WaveStates calls fn with each member a rollout's wave released.
	WaveStates(id uint64, wave int, fn func(MemberState) error) error

	// Audit returns a subject's events after sequence number after.
	Audit(subject string, after uint64, limit int) ([]Event, error)
	// AppendAudit writes an event that changes no record.
	AppendAudit(e Event) error
	// PruneAudit removes the events before `before` that are not the
	// newest of their action in their subject's trail, leaving a summary
	// of them (prune.go); ErrPruneDate, ErrPruneRunning.
	PruneAudit(ctx context.Context, before time.Time, actor string) (PruneResult, error)

	// Close releases the engine.
	Close() error
}

// Backuper is an engine that writes its own consistent copy (Bolt: the
// bbolt file). Engines without it are backed up with their database's
// tools (PostgreSQL: pg_dump).
type Backuper interface {
	Backup(w io.Writer, start func(BackupInfo)) error
}

// Pinger is an engine whose database is a server it can lose (PostgreSQL):
// Ping says, within ctx, whether it answers (ErrUnavailable if not).
// core's /readyz asks it, so a load balancer stops sending requests to a
// core whose database is away, and sends them again once it is back.
type Pinger interface {
	Ping(ctx context.Context) error
}

var (
	_ Store    = (*Bolt)(nil)
	_ Backuper = (*Bolt)(nil)
)
