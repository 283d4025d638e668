package cli

import "errors"

// ErrMismatch: a copy of a registry differs from its source (store migrate,
// store verify).
var ErrMismatch = errors.New("the copy differs from the source")
