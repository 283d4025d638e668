package renewal

import "errors"

// Errors of this package, matched with errors.Is.
var (
	// ErrNotRenewable: the certificate cannot be renewed at step-ca (it
	// lacks the clientAuth usage); only a new one helps.
	ErrNotRenewable = errors.New("certificate cannot be renewed at step-ca")
	// ErrBadRenewal: step-ca's answer is not a renewal of the certificate.
	ErrBadRenewal = errors.New("not a renewal of the certificate")
	// ErrReplaced: the certificate file holds another key's certificate
	// now (the identity was issued again); it is not written over.
	ErrReplaced = errors.New("certificate file replaced")
)
