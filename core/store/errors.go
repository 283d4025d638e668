package store

import "errors"

// Errors callers match with errors.Is.
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
	// ErrNoBackup: the engine is backed up with its database's own tools
	// (PostgreSQL: pg_dump), not through core.
	ErrNoBackup = errors.New("this store engine is backed up with its database's tools, not through core")
	// ErrNewerSchema: the database was migrated by a newer core; this one
	// refuses to run against it rather than misread it.
	ErrNewerSchema = errors.New("store schema is newer than this core")

	// ErrRolloutActive: the group's data changes only through its active
	// rollout until it is done or aborted.
	ErrRolloutActive = errors.New("the group has an active rollout")
	// ErrRolloutOver: the rollout is done or aborted; nothing changes it.
	ErrRolloutOver = errors.New("the rollout is over")
	// ErrPruneRunning: a prune of the audit trail is running already
	// (on this store, or on another core of its database).
	ErrPruneRunning = errors.New("a prune of the audit trail is running already")
	// ErrPruneDate: the date to prune to is missing or in the future.
	ErrPruneDate = errors.New("bad date to prune the audit trail to")

	// Refusals of an admission (admission.go), each a rule.
	ErrQuota         = errors.New("the batch has used its quota")
	ErrReenrollment  = errors.New("the re-enrollment policy refuses it")
	ErrAdmissionHeld = errors.New("another key is being enrolled for this serial")
)

// Errors that never leave the package.
var (
	// errStale leaves a prepared change out of its batch: its snapshot is
	// out of date (prepare.go).
	errStale = errors.New("record changed since it was read")

	// errAbortWrite marks a write whose own function failed: it leaves its
	// batch and the rest is committed without it (groupcommit.go).
	errAbortWrite = errors.New("write failed")

	// errLate: a certificate's device is revoked; it is recorded and
	// queued for revocation at the CA instead (certificates.go).
	errLate = errors.New("device revoked meanwhile")

	// errUnknownEncoding is a stored value that is neither plain JSON nor
	// one of our zstd frames (codec.go).
	errUnknownEncoding = errors.New("unknown record encoding")
)
