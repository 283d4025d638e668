package server

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
)

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return newError(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("request body over %d bytes", coreapi.MaxRequestBody), err)
		}
		return newError(http.StatusBadRequest, "bad_request", "request body is not the expected JSON: "+err.Error(), err)
	}
	if dec.More() {
		return newError(http.StatusBadRequest, "bad_request", "data after the JSON object", nil)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(v); err != nil {
		return err
	}
	w.Header().Set("Content-Type", coreapi.MediaTypeJSON)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, err := w.Write(b.Bytes())
	return err
}

func (s *Server) register(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var req coreapi.RegisterRequest
	if err := decode(r, &req); err != nil {
		s.metrics.registrations.WithLabelValues("invalid").Inc()
		return err
	}
	if req.Group == "" {
		req.Group = s.cfg.DefaultGroup
	}
	if !s.policy.HasGroup(req.Group) {
		s.metrics.registrations.WithLabelValues("invalid").Inc()
		return newError(http.StatusBadRequest, "bad_request", fmt.Sprintf("group: %q is not a configured group", truncate(req.Group)), nil)
	}
	hid, err := hwid.Parse(req.Board, req.HardwareID)
	if err != nil {
		s.metrics.registrations.WithLabelValues("invalid").Inc()
		field := "hardwareId"
		if errors.Is(err, hwid.ErrBadBoard) {
			field = "board"
		}
		return newError(http.StatusBadRequest, "bad_request", field+": "+err.Error(), err)
	}
	imm, err := s.policy.Immutable(req.Group, hid.Serial(), hid.Board)
	if err != nil {
		return newError(http.StatusInternalServerError, "internal", "the data policy cannot make this device's data", err)
	}
	v, created, err := s.store.Register(store.Registration{ID: hid, Group: req.Group, Immutable: imm, Actor: id.String()})
	if errors.Is(err, store.ErrCollision) {
		s.metrics.registrations.WithLabelValues("collision").Inc()
		s.metrics.collisions.Inc()
		s.log.Warn("serial collision: hardware ID refused", "board", hid.Board, "serial", hid.Serial(), "proxy", id.String())
		return err
	}
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		s.metrics.registrations.WithLabelValues("created").Inc()
		s.log.Info("device registered", "serial", v.Serial, "board", v.Board, "group", v.Group, "proxy", id.String())
		s.enqueue(job{serial: v.Serial})
	} else {
		s.metrics.registrations.WithLabelValues("existing").Inc()
	}
	return writeJSON(w, status, proxyView(v))
}

func (s *Server) recordIssued(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var ic coreapi.IssuedCertificate
	if err := decode(r, &ic); err != nil {
		return err
	}
	if n, ok := new(big.Int).SetString(ic.Serial, 10); !ok || n.Sign() <= 0 {
		return newError(http.StatusBadRequest, "bad_request", "serial: want the certificate's serial number in decimal", nil)
	}
	if len(ic.KeySHA256) != 64 {
		return newError(http.StatusBadRequest, "bad_request", "keySha256: want 64 hex digits", nil)
	}
	if _, err := hex.DecodeString(ic.KeySHA256); err != nil {
		return newError(http.StatusBadRequest, "bad_request", "keySha256: want 64 hex digits", nil)
	}
	serial := mux.Vars(r)["serial"]
	if pki.ValidateSerial(serial) != nil {
		return errNotFound
	}
	v, err := s.store.RecordIssued(serial, store.Issued{Serial: ic.Serial, KeySHA256: ic.KeySHA256, NotBefore: ic.NotBefore.UTC(),
		NotAfter: ic.NotAfter.UTC(), IssuedBy: id.String()})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, proxyView(v))
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	q := r.URL.Query()
	limit := 100
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			return newError(http.StatusBadRequest, "bad_request", "limit: want 1 to 1000", nil)
		}
		limit = n
	}
	after := q.Get("after")
	if after != "" && pki.ValidateSerial(after) != nil {
		return newError(http.StatusBadRequest, "bad_request", "after: want a serial", nil)
	}
	views, next, err := s.store.List(after, limit)
	if err != nil {
		return err
	}
	out := coreapi.DeviceList{Devices: make([]coreapi.Device, 0, len(views)), Next: next}
	for i := range views {
		out.Devices = append(out.Devices, adminView(&views[i]))
	}
	return writeJSON(w, http.StatusOK, out)
}

// lookup finds the device a request names. A device may only name itself:
// any other serial, existing or not, is the same 404.
func (s *Server) lookup(r *http.Request, id pki.Identity) (*store.View, error) {
	serial := mux.Vars(r)["serial"]
	if pki.ValidateSerial(serial) != nil {
		return nil, errNotFound
	}
	if id.Role == pki.RoleDevice && id.Name != serial {
		return nil, errNotFound
	}
	v, err := s.store.Device(serial)
	if err != nil {
		return nil, err
	}
	if id.Role == pki.RoleDevice {
		if v.Status == store.Revoked {
			return nil, newError(http.StatusForbidden, "revoked", "this device is revoked", nil)
		}
		s.seen(r, v)
	}
	return v, nil
}

// seen remembers the certificate a device used: a write only the first
// time it is seen.
func (s *Server) seen(r *http.Request, v *store.View) {
	fp, leaf := certFingerprint(r)
	if leaf == nil || v.HasCertificate(fp) {
		return
	}
	serial := v.Serial
	if err := s.store.SeenCertificate(serial, store.Certificate{Fingerprint: fp, Serial: leaf.SerialNumber.String(), NotAfter: leaf.NotAfter.UTC()}); err != nil {
		s.log.Warn("cannot record the device certificate", "serial", serial, "err", err)
	}
}

func (s *Server) device(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	v, err := s.lookup(r, id)
	if err != nil {
		return err
	}
	if id.Role == pki.RoleDevice {
		return writeJSON(w, http.StatusOK, coreapi.Device{Serial: v.Serial, Generation: v.Generation(), Status: string(v.Status),
			IssuedAt: v.IssuedAt(), Topic: coreapi.DeviceTopic(v.Serial)})
	}
	return writeJSON(w, http.StatusOK, adminView(v))
}

func (s *Server) bundle(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	v, err := s.lookup(r, id)
	if err != nil {
		return err
	}
	if v.Status == store.Revoked {
		return newError(http.StatusConflict, "revoked", "the device is revoked", nil)
	}
	b, err := s.images.Get(policy.Record(v))
	if err != nil {
		return newError(http.StatusInternalServerError, "internal", "cannot build the image", err)
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

func ifMatch(r *http.Request) (uint64, error) {
	h := r.Header.Get("If-Match")
	if h == "" {
		return 0, newError(http.StatusPreconditionRequired, "if_match_required", `send If-Match: "<generation>" (or the group's version) of what you changed`, nil)
	}
	v, ok := coreapi.ParseIfMatch(h)
	if !ok {
		return 0, newError(http.StatusBadRequest, "bad_request", `If-Match: want "<number>"`, nil)
	}
	return v, nil
}

func (s *Server) setDeviceData(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	want, err := ifMatch(r)
	if err != nil {
		return err
	}
	var c coreapi.DataChange
	if err := decode(r, &c); err != nil {
		return err
	}
	serial := mux.Vars(r)["serial"]
	if pki.ValidateSerial(serial) != nil {
		return errNotFound
	}
	v, err := s.store.SetDeviceData(serial, want, store.Change{Set: c.Set, Unset: c.Unset}, id.String(), func(v *store.View) error {
		return s.policy.CheckData(v.EffectiveData())
	})
	if err != nil {
		return err
	}
	s.enqueue(job{serial: serial})
	w.Header().Set("ETag", coreapi.IfMatch(v.Generation()))
	return writeJSON(w, http.StatusOK, adminView(v))
}

func (s *Server) reprovision(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	serial := mux.Vars(r)["serial"]
	if pki.ValidateSerial(serial) != nil {
		return errNotFound
	}
	v, err := s.store.Reprovision(serial, id.String())
	if err != nil {
		return err
	}
	s.enqueue(job{serial: serial})
	return writeJSON(w, http.StatusOK, adminView(v))
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	var req coreapi.RevokeRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	serial := mux.Vars(r)["serial"]
	if pki.ValidateSerial(serial) != nil {
		return errNotFound
	}
	v, err := s.store.Revoke(serial, id.String(), req.Reason)
	if err != nil {
		return err
	}
	s.log.Info("device revoked", "serial", serial, "by", id.String(), "reason", req.Reason)
	if s.revoker != nil {
		for _, c := range v.Certificates {
			if err := s.revoker.Revoke(r.Context(), c.Serial, "device revoked: "+req.Reason); err != nil {
				// Core already refuses the device; the CA refusing its
				// renewals is the second line. Report it, do not fail.
				s.log.Error("CA revocation failed; core still refuses the device", "serial", serial, "cert_serial", c.Serial, "err", err)
			}
		}
	}
	return writeJSON(w, http.StatusOK, adminView(v))
}

func (s *Server) audit(w http.ResponseWriter, r *http.Request, subject string) error {
	after := uint64(0)
	if a := r.URL.Query().Get("after"); a != "" {
		n, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return newError(http.StatusBadRequest, "bad_request", "after: want a sequence number", nil)
		}
		after = n
	}
	events, err := s.store.Audit(subject, after, 1000)
	if err != nil {
		return err
	}
	out := make([]coreapi.Event, 0, len(events))
	for _, e := range events {
		out = append(out, coreapi.Event(e))
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) deviceAudit(w http.ResponseWriter, r *http.Request, id pki.Identity) error {
	v, err := s.lookup(r, id)
	if err != nil {
		return err
	}
	return s.audit(w, r, "device/"+v.Serial)
}

func (s *Server) groupName(r *http.Request) (string, error) {
	g := mux.Vars(r)["group"]
	if !s.policy.HasGroup(g) {
		return "", newError(http.StatusNotFound, "not_found", "no such group", nil)
	}
	return g, nil
}

func (s *Server) group(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	name, err := s.groupName(r)
	if err != nil {
		return err
	}
	g, err := s.store.Group(name)
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
	want, err := ifMatch(r)
	if err != nil {
		return err
	}
	var c coreapi.DataChange
	if err := decode(r, &c); err != nil {
		return err
	}
	g, err := s.store.SetGroupData(name, want, store.Change{Set: c.Set, Unset: c.Unset}, id.String(), func(g *store.Group) error {
		return s.policy.CheckData(g.Data)
	})
	if err != nil {
		return err
	}
	s.enqueue(job{group: name})
	return writeGroup(w, g)
}

// writeGroup answers with a group and its version as the ETag.
func writeGroup(w http.ResponseWriter, g *store.Group) error {
	w.Header().Set("ETag", coreapi.IfMatch(g.Version))
	return writeJSON(w, http.StatusOK, coreapi.Group{Name: g.Name, Version: g.Version, VersionAt: g.VersionAt, Data: g.Data})
}

func (s *Server) groupAudit(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
	name, err := s.groupName(r)
	if err != nil {
		return err
	}
	return s.audit(w, r, "group/"+name)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request, _ pki.Identity) error {
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request, _ pki.Identity) error {
	if _, err := s.store.Group(s.cfg.DefaultGroup); err != nil && !errors.Is(err, store.ErrNotFound) {
		return newError(http.StatusServiceUnavailable, "not_ready", "the registry is not readable", err)
	}
	if s.ready != nil {
		if err := s.ready(); err != nil {
			return newError(http.StatusServiceUnavailable, "not_ready", "not ready", err)
		}
	}
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func proxyView(v *store.View) coreapi.Device {
	d := coreapi.Device{Serial: v.Serial, Generation: v.Generation(), Status: string(v.Status), IssuedAt: v.IssuedAt(),
		Topic: coreapi.DeviceTopic(v.Serial), Board: v.Board, Group: v.Group, Hostname: v.Immutable.Hostname,
		MQTTClientID: v.Immutable.MQTTClientID, MQTTGroupID: v.Immutable.MQTTGroupID}
	for _, c := range v.Issued {
		d.Issued = append(d.Issued, coreapi.IssuedCertificate(c))
	}
	return d
}

func adminView(v *store.View) coreapi.Device {
	d := proxyView(v)
	d.Data = v.EffectiveData()
	d.OwnData = v.Data
	d.RegisteredBy = v.RegisteredBy
	created := v.CreatedAt
	d.CreatedAt = &created
	for _, c := range v.Certificates {
		d.Certificates = append(d.Certificates, coreapi.Certificate(c))
	}
	return d
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// backup streams a consistent copy of the store (a bbolt file), with its
// length, so a cut transfer is seen as one.
func (s *Server) backup(w http.ResponseWriter, _ *http.Request, id pki.Identity) error {
	started := false
	err := s.store.Backup(w, func(info store.BackupInfo) {
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
