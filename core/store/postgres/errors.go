package postgres

import "errors"

// ErrNotEmpty: Import fills only an empty registry; it never overwrites
// or merges.
var ErrNotEmpty = errors.New("the database already holds a registry")
