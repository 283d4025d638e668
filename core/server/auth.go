package server

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/gorilla/mux"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/pki"
)

// authorize admits a request to a route: a certificate of a role the
// route serves (unless the route is public), then the caller's rate limit.
func (s *Server) authorize(route coreapi.Route, h handler) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		var id pki.Identity
		if !route.Public() {
			var err error
			if id, err = pki.PeerIdentity(r.TLS); err != nil {
				return httpapi.NewError(http.StatusUnauthorized, coreapi.CodeUnauthenticated, "a client certificate of this deployment is required", err)
			}
			// The handshake checked the CRL, but a connection outlives it:
			// a certificate revoked at the CA since is refused here, within
			// one CRL poll, however long the connection stays open.
			if s.checkRevoked != nil {
				if err := s.checkRevoked(r.TLS.VerifiedChains[0][0]); err != nil {
					return httpapi.NewError(http.StatusUnauthorized, coreapi.CodeUnauthenticated, "this certificate is revoked", err)
				}
			}
			if !route.Allows(id.Role) {
				return httpapi.NewError(http.StatusForbidden, coreapi.CodeForbidden, "this identity's role may not use this route", nil)
			}
		} else if peer, err := pki.PeerIdentity(r.TLS); err == nil {
			// A caller that presents a certificate on a public route is
			// counted under its identity, not its address: behind a load
			// balancer every anonymous caller has the balancer's address,
			// and its health checks (docs/haproxy.md) must not share their
			// budget with them. The handshake verified the certificate.
			id = peer
		}
		if wait, lim, ok := s.limiter.allow(id, r); !ok {
			e := httpapi.NewError(http.StatusTooManyRequests, coreapi.CodeRateLimited,
				fmt.Sprintf("over the limit of %g requests a second (bursts of %d) per caller; retry after %d s", lim.Rate, lim.Burst, wait), nil)
			e.RetryAfter = wait
			return e
		}
		return h(w, r, id)
	}
}

// identityAttr names the caller in the log line of a refusal.
func identityAttr(r *http.Request) []any {
	if id, err := pki.PeerIdentity(r.TLS); err == nil {
		return []any{"identity", id.String()}
	}
	return nil
}

// errNotFound is the answer for a device that does not exist and for one
// the caller may not see: the two are indistinguishable.
var errNotFound = httpapi.NewError(http.StatusNotFound, coreapi.CodeNotFound, "no such device", nil)

// serial is the {serial} of the request's path; a malformed one is a
// device that does not exist.
func serial(r *http.Request) (string, error) {
	s := mux.Vars(r)[coreapi.VarSerial]
	if pki.ValidateSerial(s) != nil {
		return "", errNotFound
	}
	return s, nil
}

// lookup finds the device a request names. A device may only name itself:
// any other serial, existing or not, is the same 404; a revoked device, or
// one whose certificate's key core did not record for it, is refused
// (registry.Admit), and the certificate it came with is remembered.
func (s *Server) lookup(r *http.Request, id pki.Identity) (*store.View, error) {
	sn, err := serial(r)
	if err != nil {
		return nil, err
	}
	if id.Role == pki.RoleDevice && id.Name != sn {
		return nil, errNotFound
	}
	v, err := s.reg.Device(sn)
	if err != nil {
		return nil, err
	}
	if id.Role != pki.RoleDevice {
		return v, nil
	}
	err = s.reg.Admit(v, r.TLS.VerifiedChains[0][0], registry.ViaAPI)
	switch {
	case errors.Is(err, store.ErrRevoked):
		return nil, httpapi.NewError(http.StatusForbidden, coreapi.CodeRevoked, "this device is revoked", nil)
	case errors.Is(err, registry.ErrKeyNotEnrolled):
		return nil, httpapi.NewError(http.StatusForbidden, coreapi.CodeKeyNotEnrolled,
			"this certificate's key is not the one enrolled for this device; enroll the device again at a factory", err)
	case errors.Is(err, registry.ErrNotAttested):
		return nil, httpapi.NewError(http.StatusForbidden, coreapi.CodeNotAttested,
			fmt.Sprintf("group %s requires a key held by a TPM; this device's key was not attested at enrollment: enroll it again at a factory with prov-device enroll --key tpm", v.Group), err)
	case err != nil:
		return nil, err
	}
	return v, nil
}
