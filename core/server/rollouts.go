package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/pki"
)

// report keeps a device's report of what it runs: the device's own serial
// only (lookup), and a body bounded by the contract.
func (s *Server) report(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	v, err := s.lookup(r, id)
	if err != nil {
		return err
	}
	var rep coreapi.Report
	if err := httpapi.DecodeJSON(w, r, &rep, coreapi.MaxReportBody); err != nil {
		return err
	}
	saved, err := s.reg.Report(v.Serial, rep)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, saved)
}

// fleet is what a group's members run; ?staleAfter=SECONDS.
func (s *Server) fleet(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	name, err := s.groupName(r)
	if err != nil {
		return err
	}
	var stale time.Duration
	if q := r.URL.Query().Get("staleAfter"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 {
			return httpapi.BadRequest("staleAfter: want a number of seconds", nil)
		}
		stale = time.Duration(n) * time.Second
	}
	f, err := s.reg.Fleet(name, stale, time.Now())
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, f)
}

func (s *Server) startRollout(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	name, g, err := s.groupIfMatch(r)
	if err != nil {
		return err
	}
	var req coreapi.RolloutRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	ro, err := s.reg.StartRollout(name, g.Version, req, id)
	if err != nil {
		return err
	}
	return writeRollout(w, http.StatusCreated, ro)
}

func (s *Server) groupRollouts(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	name, err := s.groupName(r)
	if err != nil {
		return err
	}
	list, err := s.reg.GroupRollouts(name)
	if err != nil {
		return err
	}
	out := coreapi.RolloutList{Rollouts: list}
	if out.Rollouts == nil {
		out.Rollouts = []store.Rollout{}
	}
	return httpapi.WriteJSON(w, http.StatusOK, out)
}

// rolloutID is the {rollout} of the request's path.
func rolloutID(r *http.Request) (uint64, error) {
	n, err := strconv.ParseUint(mux.Vars(r)[coreapi.VarRollout], 10, 64)
	if err != nil || n == 0 {
		return 0, errNotFound
	}
	return n, nil
}

func (s *Server) rollout(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	n, err := rolloutID(r)
	if err != nil {
		return err
	}
	ro, err := s.reg.Rollout(n)
	if err != nil {
		return err
	}
	// Its waves' status changes with every report, without a version:
	// the answer is never cached; the ETag is the rev, what an action's
	// If-Match takes.
	w.Header().Set("Cache-Control", "no-store")
	return writeRollout(w, http.StatusOK, ro)
}

// rolloutAction is the handler of one admin action on a rollout, with
// If-Match on its rev.
func (s *Server) rolloutAction(action string) handler {
	return func(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
		n, err := rolloutID(r)
		if err != nil {
			return err
		}
		if err := requireIfMatch(r); err != nil {
			return err
		}
		ro, err := s.reg.Rollout(n)
		if err != nil {
			return err
		}
		// The store takes the step only if the rollout is still at this rev.
		if _, err := httpapi.Preconditions(r, coreapi.IfMatch(ro.Rev)); err != nil {
			return err
		}
		var body coreapi.RolloutAction
		if err := decode(w, r, &body); err != nil {
			return err
		}
		if len(body.Reason) > 1000 {
			return httpapi.BadRequest("reason: at most 1000 bytes", nil)
		}
		if ro, err = s.reg.RolloutAction(n, ro.Rev, action, body.Reason, id); err != nil {
			return err
		}
		return writeRollout(w, http.StatusOK, ro)
	}
}

// writeRollout answers with a rollout and its rev as the ETag.
func writeRollout(w http.ResponseWriter, status int, ro *store.Rollout) error {
	w.Header().Set("ETag", coreapi.IfMatch(ro.Rev))
	return httpapi.WriteJSON(w, status, ro)
}
