package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/store"
)

// Error is the one error type handlers return: a status, a public message,
// and the internal cause, which is logged once and never sent.
type Error struct {
	Status     int
	Code       string
	Message    string
	Cause      error
	RetryAfter int // seconds, for 429 and 503
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%d %s: %v", e.Status, e.Message, e.Cause)
	}
	return fmt.Sprintf("%d %s", e.Status, e.Message)
}

func (e *Error) Unwrap() error { return e.Cause }

func newError(status int, code, msg string, cause error) *Error {
	return &Error{Status: status, Code: code, Message: msg, Cause: cause}
}

var errNotFound = newError(http.StatusNotFound, "not_found", "no such device", nil)

// fromStore maps the errors of the layers below to public errors. Input
// errors carry their own message, which names the field and is safe: it
// echoes only validated or quoted-and-truncated input.
func fromStore(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, store.ErrNotFound):
		return errNotFound
	case errors.Is(err, store.ErrCollision):
		return newError(http.StatusConflict, "serial_collision", "another hardware ID already has the serial this one maps to; the device was not registered", err)
	case errors.Is(err, store.ErrConflict):
		return newError(http.StatusPreconditionFailed, "version_conflict", err.Error(), err)
	case errors.Is(err, store.ErrUnknownGroup):
		return newError(http.StatusBadRequest, "unknown_group", err.Error(), err)
	case errors.Is(err, store.ErrRevoked):
		return newError(http.StatusConflict, "revoked", "the device is revoked", err)
	case errors.Is(err, hwid.ErrBadBoard), errors.Is(err, hwid.ErrBadHardwareID),
		errors.Is(err, imagebuild.ErrBadRecord), errors.Is(err, imagespec.ErrBadPath), errors.Is(err, imagespec.ErrTooLarge),
		errors.Is(err, imagespec.ErrBadValue):
		return newError(http.StatusBadRequest, "bad_request", err.Error(), err)
	case errors.Is(err, store.ErrUnavailable):
		e := newError(http.StatusServiceUnavailable, "unavailable", "the registry cannot write now; try again later", err)
		e.RetryAfter = 5
		return e
	default:
		return newError(http.StatusInternalServerError, "internal", "internal error", err)
	}
}

// writeError writes e as JSON and logs its cause once.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, e *Error) {
	level := slog.LevelInfo
	if e.Status >= 500 {
		level = slog.LevelError
	}
	attrs := []any{"status", e.Status, "code", e.Code, "method", r.Method, "path", r.URL.Path}
	if id, ok := identityFrom(r); ok {
		attrs = append(attrs, "identity", id.String())
	}
	if e.Cause != nil {
		attrs = append(attrs, "cause", e.Cause.Error())
	}
	log.Log(r.Context(), level, "request refused", attrs...)
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	w.Header().Set("Content-Type", coreapi.MediaTypeJSON)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(coreapi.Error{Code: e.Code, Message: e.Message})
}
