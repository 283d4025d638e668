package server

import (
	"errors"
	"net/http"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
)

// classify maps the errors of the layers below to public errors. Input
// errors carry their own message, which names the field and is safe: it
// echoes only validated or quoted-and-truncated input.
func classify(err error) *httpapi.Error {
	var bad *registry.BadInput
	var refusal *store.Refusal
	switch {
	case errors.As(err, &bad):
		return httpapi.BadRequest(bad.Error(), err)
	case errors.Is(err, store.ErrNotFound):
		return errNotFound
	case errors.Is(err, registry.ErrNoSuchGroup):
		return httpapi.NewError(http.StatusNotFound, coreapi.CodeNotFound, "no such group", nil)
	case errors.Is(err, store.ErrCollision):
		return httpapi.NewError(http.StatusConflict, coreapi.CodeSerialCollision, "another hardware ID already has the serial this one maps to; the device was not registered", err)
	case errors.Is(err, store.ErrRolloutActive):
		return httpapi.NewError(http.StatusConflict, coreapi.CodeRolloutActive, err.Error()+": the group's data changes through it until it is done or aborted", err)
	case errors.Is(err, store.ErrRolloutOver):
		return httpapi.NewError(http.StatusConflict, coreapi.CodeRolloutOver, err.Error(), err)
	case errors.Is(err, store.ErrConflict):
		return httpapi.NewError(http.StatusPreconditionFailed, coreapi.CodeVersionConflict, err.Error(), err)
	case errors.Is(err, store.ErrUnknownGroup):
		return httpapi.NewError(http.StatusBadRequest, coreapi.CodeUnknownGroup, err.Error(), err)
	case errors.Is(err, store.ErrRevoked):
		return httpapi.NewError(http.StatusConflict, coreapi.CodeRevoked, "the device is revoked", err)
	case errors.Is(err, hwid.ErrBadBoard), errors.Is(err, hwid.ErrBadHardwareID),
		errors.Is(err, imagebuild.ErrBadRecord), errors.Is(err, imagespec.ErrBadPath), errors.Is(err, imagespec.ErrTooLarge),
		errors.Is(err, imagespec.ErrBadValue):
		return httpapi.BadRequest(err.Error(), err)
	case errors.Is(err, store.ErrNoBackup):
		return httpapi.NewError(http.StatusNotImplemented, coreapi.CodeNoBackup,
			"core's store is on PostgreSQL: back it up with pg_dump (docs/operations.md), not through core", err)
	case errors.As(err, &refusal):
		code := coreapi.CodeAdmissionQuota
		switch {
		case errors.Is(err, store.ErrReenrollment):
			code = coreapi.CodeAdmissionReenrollment
		case errors.Is(err, store.ErrAdmissionHeld):
			code = coreapi.CodeAdmissionInProgress
		}
		return httpapi.NewError(http.StatusConflict, code, refusal.Reason, err)
	case errors.Is(err, store.ErrUnavailable):
		e := httpapi.NewError(http.StatusServiceUnavailable, coreapi.CodeUnavailable, "the registry's store (its disk or database) is unavailable now; try again later", err)
		e.RetryAfter = 5
		return e
	}
	return nil
}
