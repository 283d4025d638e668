package server

import (
	"net/http"
	"strconv"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/pki"
)

func decode(w http.ResponseWriter, r *http.Request, v any) error {
	return httpapi.DecodeJSON(w, r, v, coreapi.MaxRequestBody)
}

func (s *Server) register(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var req coreapi.RegisterRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	v, created, err := s.reg.Register(req, id)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return httpapi.WriteJSON(w, status, proxyView(v))
}

func (s *Server) recordIssued(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var ic coreapi.IssuedCertificate
	if err := decode(w, r, &ic); err != nil {
		return err
	}
	sn, err := serial(r)
	if err != nil {
		return err
	}
	v, err := s.reg.RecordIssued(sn, ic, id)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, proxyView(v))
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	q := r.URL.Query()
	limit := 100
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			return httpapi.BadRequest("limit: want 1 to 1000", nil)
		}
		limit = n
	}
	after := q.Get("after")
	if after != "" && pki.ValidateSerial(after) != nil {
		return httpapi.BadRequest("after: want a serial", nil)
	}
	views, next, err := s.reg.List(after, limit)
	if err != nil {
		return err
	}
	out := coreapi.DeviceList{Devices: make([]coreapi.Device, 0, len(views)), Next: next}
	for i := range views {
		d, err := s.adminView(&views[i])
		if err != nil {
			return err
		}
		out.Devices = append(out.Devices, d)
	}
	return httpapi.WriteJSON(w, http.StatusOK, out)
}

func (s *Server) device(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	v, err := s.lookup(r, id)
	if err != nil {
		return err
	}
	if id.Role == pki.RoleDevice {
		return httpapi.WriteJSON(w, http.StatusOK, deviceView(v))
	}
	return s.writeAdminView(w, v)
}

func (s *Server) bundle(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	v, err := s.lookup(r, id)
	if err != nil {
		return err
	}
	if v.Status == store.Revoked {
		return httpapi.NewError(http.StatusConflict, coreapi.CodeRevoked, "the device is revoked", nil)
	}
	b, err := s.reg.Bundle(v)
	if err != nil {
		return httpapi.NewError(http.StatusInternalServerError, coreapi.CodeInternal, "cannot build the image", err)
	}
	h := w.Header()
	h.Set("ETag", b.ETag)
	h.Set(coreapi.HeaderGeneration, strconv.FormatUint(b.Generation, 10))
	h.Set("Cache-Control", "private, no-cache")
	if inm := r.Header.Get("If-None-Match"); inm != "" && inm == b.ETag {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Type", coreapi.MediaTypeBundle)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(b.Bytes)))
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(b.Bytes) //nolint:gosec // a signed binary bundle, not HTML: own media type and nosniff
	return err
}

// writeAdminView answers with the admin's view of v.
func (s *Server) writeAdminView(w http.ResponseWriter, v *store.View) error {
	d, err := s.adminView(v)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, d)
}

// ifMatch is the version a change starts from.
func ifMatch(r *http.Request) (uint64, error) {
	h := r.Header.Get("If-Match")
	if h == "" {
		return 0, httpapi.NewError(http.StatusPreconditionRequired, coreapi.CodeIfMatchRequired,
			`send If-Match: "<generation>" (or the group's version) of what you changed`, nil)
	}
	v, ok := coreapi.ParseIfMatch(h)
	if !ok {
		return 0, httpapi.BadRequest(`If-Match: want "<number>"`, nil)
	}
	return v, nil
}

// change reads a data change and the version it starts from.
func change(w http.ResponseWriter, r *http.Request) (uint64, coreapi.DataChange, error) {
	var c coreapi.DataChange
	want, err := ifMatch(r)
	if err != nil {
		return 0, c, err
	}
	if err := decode(w, r, &c); err != nil {
		return 0, c, err
	}
	return want, c, nil
}

func (s *Server) setDeviceData(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	want, c, err := change(w, r)
	if err != nil {
		return err
	}
	sn, err := serial(r)
	if err != nil {
		return err
	}
	v, err := s.reg.SetDeviceData(sn, want, c, id)
	if err != nil {
		return err
	}
	w.Header().Set("ETag", coreapi.IfMatch(v.Generation()))
	return s.writeAdminView(w, v)
}

func (s *Server) reprovision(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	sn, err := serial(r)
	if err != nil {
		return err
	}
	v, err := s.reg.Reprovision(sn, id)
	if err != nil {
		return err
	}
	return s.writeAdminView(w, v)
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var req coreapi.RevokeRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	sn, err := serial(r)
	if err != nil {
		return err
	}
	v, err := s.reg.Revoke(r.Context(), sn, req.Reason, id)
	if err != nil {
		return err
	}
	return s.writeAdminView(w, v)
}

func (s *Server) deviceAudit(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	v, err := s.lookup(r, id)
	if err != nil {
		return err
	}
	after, err := auditAfter(r)
	if err != nil {
		return err
	}
	events, err := s.reg.DeviceAudit(v.Serial, after)
	if err != nil {
		return err
	}
	return writeEvents(w, events)
}

// auditAfter is the ?after= of an audit request.
func auditAfter(r *http.Request) (uint64, error) {
	a := r.URL.Query().Get("after")
	if a == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(a, 10, 64)
	if err != nil {
		return 0, httpapi.BadRequest("after: want a sequence number", nil)
	}
	return n, nil
}
