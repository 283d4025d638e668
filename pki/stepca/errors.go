package stepca

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Errors of this package, matched with errors.Is.
var (
	// ErrAlreadyRevoked: step-ca already holds the certificate as revoked.
	// A retried revocation meets it and may treat it as done.
	ErrAlreadyRevoked = errors.New("certificate already revoked at step-ca")
	// ErrBadAnswer: the answer is not what step-ca sends (not JSON, too
	// large, no certificate where one belongs, a CRL that does not parse).
	ErrBadAnswer = errors.New("malformed answer from step-ca")
	// ErrCRLSignature: the CRL is not signed by the issuer the caller trusts.
	ErrCRLSignature = errors.New("CRL not signed by the expected issuer")
	// ErrNoClientCertificate: renewal needs the current certificate
	// (WithClientCertificate).
	ErrNoClientCertificate = errors.New("renewal needs a client certificate")
	// ErrNotTheCA: the server at the CA's URL holds a certificate of the
	// deployment that names an identity (a service's, such as core's), not
	// step-ca's own (WithCAIdentityCheck).
	ErrNotTheCA = errors.New("server is not the deployment's step-ca")
	// ErrNoProvisioner: step-ca does not list a provisioner by that name.
	ErrNoProvisioner = errors.New("no such provisioner")
)

// Error is step-ca's refusal: an answer outside 2xx, with the message of its
// JSON error body ({"status":N,"message":"..."}, errs.Error in step-ca) or,
// when the body is not that, its first bytes.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("step-ca answered HTTP %d", e.Status)
	}
	return fmt.Sprintf("step-ca answered HTTP %d: %s", e.Status, e.Message)
}

// alreadyRevoked decides, in this one place, whether a refused revocation
// means the certificate was already revoked. step-ca v0.30.2 says so only in
// words: authority/tls.go (Authority.Revoke, failRevoke) turns the
// database's db.ErrAlreadyExists into
// errs.BadRequest("certificate with serial number '%s' is already revoked"),
// and api/revoke.go passes that *errs.Error through errs.ForbiddenErr
// unchanged, so the answer is HTTP 400 with
// {"status":400,"message":"The request could not be completed: certificate
// with serial number '<serial>' is already revoked."}. Its answers carry no
// error code, so the status and that phrase are all there is to go on; a
// test against the real step-ca (TestRevokeTwice) pins it.
func alreadyRevoked(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusBadRequest && strings.Contains(e.Message, "is already revoked")
}
