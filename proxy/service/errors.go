package service

import (
	"errors"
	"fmt"
)

// Errors of the proxy's start, matched with errors.Is; an *UpstreamError
// carries one of them.
var (
	// ErrWrongIdentity: core or step-ca answered with a certificate that
	// is not its own in this deployment (another deployment's root, another
	// role, a core name not in core.names, a service's certificate in
	// step-ca's place). Not retried: waiting does not change who answers.
	ErrWrongIdentity = errors.New("answers with a certificate that is not its own")
	// ErrNoAnswer: core or step-ca did not answer within startupTimeout.
	ErrNoAnswer = errors.New("does not answer")
)

// UpstreamError is why the proxy refused to start: which upstream, where,
// and why (ErrWrongIdentity or ErrNoAnswer, with the last cause).
type UpstreamError struct {
	Upstream string // "core" or "step-ca"
	URL      string
	Err      error
}

func (e *UpstreamError) Error() string { return fmt.Sprintf("%s at %s: %v", e.Upstream, e.URL, e.Err) }

func (e *UpstreamError) Unwrap() error { return e.Err }

// notItself is a failed check of core's certificate: its message is the
// check's, and it is ErrWrongIdentity.
type notItself struct{ err error }

func (e notItself) Error() string { return e.err.Error() }

func (e notItself) Unwrap() []error { return []error{ErrWrongIdentity, e.err} }
