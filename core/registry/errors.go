package registry

import "errors"

// Errors callers match with errors.Is.
var (
	// ErrNoSuchGroup is a group the configuration does not name.
	ErrNoSuchGroup = errors.New("no such group")
	// ErrKeyNotEnrolled is a device certificate whose public key core did
	// not record for the device: a certificate minted for its identity
	// with another key (a stolen provisioner key), or a device that must
	// be enrolled again.
	ErrKeyNotEnrolled = errors.New("the certificate's key is not one enrolled for the device")
	// ErrDatabaseAway: the store's database does not answer (Ready).
	ErrDatabaseAway = errors.New("the registry's database does not answer")
)
