package server

import (
	"errors"
	"net/http"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/pki"
)

// auditPrune prunes the audit trail to the date asked (admin). It answers
// when the prune ends; if the client goes away meanwhile the prune stops
// between two batches, what it did stays done, and asking again goes on
// from there (a prune is idempotent).
func (s *Server) auditPrune(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var req coreapi.AuditPrune
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Before.IsZero() {
		return httpapi.BadRequest("before: required: the date (RFC 3339) before which events are pruned", nil)
	}
	res, err := s.reg.PruneAudit(r.Context(), req.Before, id)
	if errors.Is(err, store.ErrPruneRunning) {
		return httpapi.NewError(http.StatusConflict, coreapi.CodePruneRunning, "another prune of the audit trail is running; try again when it ends", err)
	}
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, coreapi.AuditPruneResult{Before: req.Before, Subjects: res.Subjects, Events: res.Events, Actions: res.Actions})
}
