package attest

import "errors"

// The refusals of an attestation, matched with errors.Is; each *Error
// carries one of them with the reason in words.
var (
	// ErrUntrustedEK: the endorsement key certificate does not chain to
	// a configured manufacturer root, or is not an RSA 2048 EK's.
	ErrUntrustedEK = errors.New("the TPM's endorsement key certificate is not from a trusted manufacturer")
	// ErrBadAK: the attestation key is not a restricted signing key made
	// in the TPM with a supported scheme.
	ErrBadAK = errors.New("the attestation key is not a TPM-resident restricted signing key")
	// ErrNotActivated: the board did not open the credential: its
	// attestation key is not in the TPM of the endorsement key.
	ErrNotActivated = errors.New("the attestation key was not activated by the TPM of the endorsement key")
	// ErrExportable: the device key may leave the TPM, or was not made
	// inside it (fixedTPM, fixedParent or sensitiveDataOrigin clear).
	ErrExportable = errors.New("the device key is exportable or was not made in the TPM")
	// ErrBadKey: the device key is not an ECC P-256 signing key.
	ErrBadKey = errors.New("the device key is not an ECC P-256 signing key")
	// ErrNotCertified: the certification of the device key is not the
	// attestation key's, not of this key, or not for this enrollment:
	// the key is not proven to be in this TPM.
	ErrNotCertified = errors.New("the device key is not certified by this attestation key")
	// ErrKeyMismatch: the CSR's key is not the certified key.
	ErrKeyMismatch = errors.New("the CSR's key differs from the certified key")
	// ErrUnknownChallenge: no such challenge (never issued, issued for
	// another board, or forgotten by a restarted proxy).
	ErrUnknownChallenge = errors.New("unknown attestation challenge")
	// ErrExpiredChallenge: the challenge's time is over.
	ErrExpiredChallenge = errors.New("the attestation challenge has expired")
	// ErrReplayed: the challenge was answered before; each is good once.
	ErrReplayed = errors.New("the attestation challenge was already used (a replayed attestation)")
	// ErrEKNotListed: the batch manifest lists another endorsement key
	// for the board (its TPM is not the one recorded at bring-up).
	ErrEKNotListed = errors.New("the TPM's endorsement key is not the one the manifest lists for this board")
	// ErrMissing: the board's batch requires attestation, or the proxy
	// has none configured for a board that sent one.
	ErrMissing = errors.New("attestation required")
	// ErrBusy: too many challenges are outstanding; retry shortly.
	ErrBusy = errors.New("too many attestation challenges outstanding")
)

// Error is one refusal: Err is a sentinel above, Reason the detail.
type Error struct {
	Err    error
	Reason string
}

func (e *Error) Error() string {
	if e.Reason == "" {
		return e.Err.Error()
	}
	return e.Err.Error() + ": " + e.Reason
}

func (e *Error) Unwrap() error { return e.Err }

func fail(sentinel error, reason string) *Error { return &Error{Err: sentinel, Reason: reason} }
