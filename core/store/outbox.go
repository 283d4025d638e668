package store

import "context"

// Job is a change to act on, claimed from an engine's outbox, with the
// devices it concerns as they were read when it was claimed.
type Job struct {
	ID       int64
	Kind     string // JobDevice or JobMembers
	Subject  string // a serial, or a group
	Attempts int    // earlier attempts that failed
	Devices  []View
}

// The kinds of job a claimer is given (a group's own job is split by the
// engine into members jobs before anyone acts on it).
const (
	JobDevice  = "device"
	JobMembers = "members"
)

// Outbox is an engine whose changes write their own jobs, in the change's
// transaction, for any core sharing the engine to claim: an acknowledged
// change always has its job, and a core that dies while acting on one
// leaves it to another (the PostgreSQL engine). A group's job wakes every
// core's listener; a device's job only the core that made the change,
// which is told in memory as without an outbox (bbolt, a single core),
// and others find it when they next look.
type Outbox interface {
	// ClaimJobs holds up to limit ready jobs no other core holds and calls
	// do with each; a job do returns nil for is deleted, any other is
	// tried again later; both in the transaction that holds them. n is how
	// many jobs it claimed, 0 when none is ready.
	ClaimJobs(ctx context.Context, limit int, do func(ctx context.Context, j *Job) error) (n int, err error)
	// ListenJobs calls wake whenever jobs may be ready: on each
	// notification, and after every connection and reconnection (what was
	// sent while disconnected is lost). It returns when ctx ends; onError
	// is told of connection failures, after which it reconnects.
	ListenJobs(ctx context.Context, wake func(), onError func(error)) error
}
