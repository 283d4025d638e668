package cmdline

import "errors"

// ErrUsage marks an error in the caller's command line; it exits with
// ExitUsage.
var ErrUsage = errors.New("usage")

// WithExitCode makes err exit with code, one of the program's own (above
// ExitUsage), its message unchanged. nil stays nil.
func WithExitCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitCodeError{code: code, err: err}
}

// exitCodeError carries its exit code; the dispatcher finds it with
// errors.As, however deeply it is wrapped.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }
