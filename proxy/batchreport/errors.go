package batchreport

import "errors"

// Sentinel errors, matched with errors.Is.
var (
	// ErrMalformed: the report is not one this package writes.
	ErrMalformed = errors.New("malformed batch report")
	// ErrBadSignature: the signature does not verify over the report's
	// exact bytes with the key of the signer's certificate.
	ErrBadSignature = errors.New("batch report signature does not verify")
	// ErrNotProxyKey: the signing key is not an ECDSA key, the only kind a
	// detached DER ECDSA signature can be made with.
	ErrNotProxyKey = errors.New("the signing key is not ECDSA")
	// ErrHeadMismatch: the factory record no longer holds the head the
	// report names at the position it names (cut, rewritten or another
	// record).
	ErrHeadMismatch = errors.New("the factory record does not hold the reported head")
)
