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
	// ErrNotAttested is a device of a group that requires a TPM-resident
	// key (policy.groups.G.requireTPM) calling with a key the proxy did
	// not attest at enrollment.
	ErrNotAttested = errors.New("the certificate's key was not attested resident in a TPM")
	// ErrDatabaseAway: the store's database does not answer (Ready).
	ErrDatabaseAway = errors.New("the registry's database does not answer")
)
