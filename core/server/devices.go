package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

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
	view := deviceView(v)
	if id.Role != pki.RoleDevice {
		if view, err = s.adminView(v); err != nil {
			return err
		}
	}
	tag, err := viewTag(v.Generation(), view)
	if err != nil {
		return httpapi.Internal(err)
	}
	h := w.Header()
	h.Set("ETag", tag)
	h.Set("Cache-Control", "private, no-cache")
	if res, err := httpapi.Preconditions(r, tag); err != nil || res == httpapi.NotModified {
		if err == nil {
			httpapi.WriteNotModified(w)
		}
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, view)
}

// viewTag is the entity tag of a device's view: its generation, the
// version of its data and image (what PATCH …/data's If-Match takes), and
// a digest of the view itself, which also changes with what has no
// version (status, certificates seen, revocations pending at the CA), so
// that a 304 never hides a change (RFC 9110 §8.8.1: a strong validator
// changes with every change to the representation).
func viewTag(generation uint64, view coreapi.Device) (string, error) {
	b, err := json.Marshal(view)
	if err != nil {
		return "", fmt.Errorf("entity tag: %w", err)
	}
	sum := sha256.Sum256(b)
	return `"` + strconv.FormatUint(generation, 10) + "." + hex.EncodeToString(sum[:8]) + `"`, nil
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
	if res, err := httpapi.Preconditions(r, b.ETag); err != nil || res == httpapi.NotModified {
		if err == nil {
			httpapi.WriteNotModified(w)
		}
		return err
	}
	h.Set("Content-Type", coreapi.MediaTypeBundle)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(b.Bytes)))
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(b.Bytes) //nolint:gosec // a signed binary bundle, not HTML: own media type and nosniff
	return err
}

// taggedAdminView is the admin's view of v and its entity tag.
func (s *Server) taggedAdminView(v *store.View) (coreapi.Device, string, error) {
	d, err := s.adminView(v)
	if err != nil {
		return d, "", err
	}
	tag, err := viewTag(v.Generation(), d)
	if err != nil {
		return d, "", httpapi.Internal(err)
	}
	return d, tag, nil
}

// writeAdminView answers with the admin's view of v and its entity tag.
func (s *Server) writeAdminView(w http.ResponseWriter, v *store.View) error {
	d, tag, err := s.taggedAdminView(v)
	if err != nil {
		return err
	}
	w.Header().Set("ETag", tag)
	return httpapi.WriteJSON(w, http.StatusOK, d)
}

// requireIfMatch refuses a change sent without If-Match: changes of
// versioned data must say which version they start from (RFC 6585 §3).
func requireIfMatch(r *http.Request) error {
	if len(r.Header.Values("If-Match")) == 0 {
		return httpapi.NewError(http.StatusPreconditionRequired, coreapi.CodeIfMatchRequired,
			`send If-Match: "<generation>" (or the group's version), or the ETag of what you read, or *`, nil)
	}
	return nil
}

func (s *Server) setDeviceData(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	if err := requireIfMatch(r); err != nil {
		return err
	}
	sn, err := serial(r)
	if err != nil {
		return err
	}
	v, err := s.reg.Device(sn)
	if err != nil {
		return err
	}
	// The data's version is the generation; the ETag a GET of the device
	// gave is accepted too (strong comparison: the device as read is
	// unchanged). The store then changes it only if it is still at that
	// generation, so a change in between is a 412 all the same.
	_, tag, err := s.taggedAdminView(v)
	if err != nil {
		return err
	}
	if _, err := httpapi.Preconditions(r, coreapi.IfMatch(v.Generation()), tag); err != nil {
		return err
	}
	var c coreapi.DataChange
	if err := decode(w, r, &c); err != nil {
		return err
	}
	if v, err = s.reg.SetDeviceData(sn, v.Generation(), c, id); err != nil {
		return err
	}
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
	// The reason is what the audit trail and the CA's record say later;
	// a revoke without one cannot be told from a mistake.
	if strings.TrimSpace(req.Reason) == "" {
		return httpapi.BadRequest("reason: required: say why the device is revoked (the audit trail and step-ca keep it)", nil)
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

func (s *Server) admit(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var req coreapi.AdmissionRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	a, err := s.reg.AdmitEnrollment(req, id)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, a)
}

func (s *Server) endAdmission(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var end coreapi.AdmissionEnd
	if err := decode(w, r, &end); err != nil {
		return err
	}
	sn, err := serial(r)
	if err != nil {
		return err
	}
	if err := s.reg.EndEnrollment(sn, end, id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
