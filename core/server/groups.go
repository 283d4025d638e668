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
	return writeGroup(w, g)
}

func (s *Server) setGroupData(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	name, err := s.groupName(r)
	if err != nil {
		return err
	}
	want, c, err := change(w, r)
	if err != nil {
		return err
	}
	g, err := s.reg.SetGroupData(name, want, c, id)
	if err != nil {
		return err
	}
	return writeGroup(w, g)
}

// writeGroup answers with a group and its version as the ETag.
func writeGroup(w http.ResponseWriter, g *store.Group) error {
	w.Header().Set("ETag", coreapi.IfMatch(g.Version))
	return httpapi.WriteJSON(w, http.StatusOK, coreapi.Group{Name: g.Name, Version: g.Version, VersionAt: g.VersionAt, Data: g.Data})
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
