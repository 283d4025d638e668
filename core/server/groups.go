package server

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/pki"
)

// groupName is the {group} of the request's path, if it is a configured
// group; checked before anything else about the request.
func (s *Server) groupName(r *http.Request) (string, error) {
	g := mux.Vars(r)[coreapi.VarGroup]
	if !s.reg.HasGroup(g) {
		return "", registry.ErrNoSuchGroup
	}
	return g, nil
}

func (s *Server) group(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	name, err := s.groupName(r)
	if err != nil {
		return err
	}
	g, err := s.reg.Group(name)
	if err != nil {
		return err
	}
	// A group's answer is its name, version and data: the version is a
	// strong validator of all of it.
	w.Header().Set("ETag", coreapi.IfMatch(g.Version))
	w.Header().Set("Cache-Control", "private, no-cache")
	if res, err := httpapi.Preconditions(r, coreapi.IfMatch(g.Version)); err != nil || res == httpapi.NotModified {
		if err == nil {
			httpapi.WriteNotModified(w)
		}
		return err
	}
	return writeGroup(w, g)
}

func (s *Server) setGroupData(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	name, g, err := s.groupIfMatch(r)
	if err != nil {
		return err
	}
	var c coreapi.DataChange
	if err := decode(w, r, &c); err != nil {
		return err
	}
	if g, err = s.reg.SetGroupData(name, g.Version, c, id); err != nil {
		return err
	}
	return writeGroup(w, g)
}

func (s *Server) groupAudit(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	name, err := s.groupName(r)
	if err != nil {
		return err
	}
	after, err := auditAfter(r)
	if err != nil {
		return err
	}
	events, err := s.reg.GroupAudit(name, after)
	if err != nil {
		return err
	}
	return writeEvents(w, events)
}

// groupIfMatch is the group the request's path names, if the request's
// If-Match (required) names its version: the store changes the group only
// if it is still at that version.
func (s *Server) groupIfMatch(r *http.Request) (string, *store.Group, error) {
	name, err := s.groupName(r)
	if err != nil {
		return "", nil, err
	}
	if err := requireIfMatch(r); err != nil {
		return "", nil, err
	}
	g, err := s.reg.Group(name)
	if err != nil {
		return "", nil, err
	}
	if _, err := httpapi.Preconditions(r, coreapi.IfMatch(g.Version)); err != nil {
		return "", nil, err
	}
	return name, g, nil
}

// writeGroup answers with a group and its version as the ETag.
func writeGroup(w http.ResponseWriter, g *store.Group) error {
	w.Header().Set("ETag", coreapi.IfMatch(g.Version))
	return httpapi.WriteJSON(w, http.StatusOK, coreapi.Group{Name: g.Name, Version: g.Version, VersionAt: g.VersionAt, Data: g.Data, Rollout: g.Rollout})
}
