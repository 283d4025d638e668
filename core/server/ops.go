package server

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/pki"
)

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request, _ pki.Identity) error {
	return httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request, _ pki.Identity) error {
	if err := s.reg.Ready(); errors.Is(err, registry.ErrDatabaseAway) {
		return httpapi.NewError(http.StatusServiceUnavailable, coreapi.CodeNotReady, "the registry's database does not answer", err)
	} else if err != nil {
		return httpapi.NewError(http.StatusServiceUnavailable, coreapi.CodeNotReady, "the registry is not readable", err)
	}
	if s.ready != nil {
		if err := s.ready(); err != nil {
			return httpapi.NewError(http.StatusServiceUnavailable, coreapi.CodeNotReady, "not ready", err)
		}
	}
	var warnings []string
	if s.warnings != nil {
		warnings = s.warnings()
	}
	return httpapi.WriteReady(w, warnings)
}

// backup streams a consistent copy of the store (a bbolt file), with its
// length, so a cut transfer is seen as one.
func (s *Server) backup(w http.ResponseWriter, _ *http.Request, id pki.Identity) error {
	started := false
	err := s.reg.Backup(w, func(info store.BackupInfo) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(info.Size, 10))
		w.Header().Set(coreapi.HeaderBackupDevices, strconv.Itoa(info.Devices))
		w.Header().Set(coreapi.HeaderBackupGroups, strconv.Itoa(info.Groups))
		w.Header().Set("Content-Disposition", `attachment; filename="registry.db"`)
		w.WriteHeader(http.StatusOK)
		started = true
	})
	if err != nil && started {
		// The status is out; the short body tells the client.
		s.log.Error("backup cut short", "admin", id.String(), "err", err)
		return nil
	}
	if err == nil {
		s.log.Info("backup sent", "admin", id.String())
	}
	return err
}
