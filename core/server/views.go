package server

import (
	"net/http"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/httpapi"
)

// deviceView is what a device sees of itself.
func deviceView(v *store.View) coreapi.Device {
	return coreapi.Device{Serial: v.Serial, Generation: v.Generation(), Status: v.Status,
		IssuedAt: v.IssuedAt(), Topic: coreapi.DeviceTopic(v.Serial)}
}

// proxyView adds what a proxy needs to enroll: the immutable data and the
// certificates issued so far (the re-enrollment policy decides on them).
func proxyView(v *store.View) coreapi.Device {
	d := deviceView(v)
	d.Board, d.Group = v.Board, v.Group
	d.Hostname, d.MQTTClientID, d.MQTTGroupID = v.Immutable.Hostname, v.Immutable.MQTTClientID, v.Immutable.MQTTGroupID
	for _, c := range v.Issued {
		d.Issued = append(d.Issued, coreapi.IssuedCertificate(c))
	}
	return d
}

// adminView is everything, with what is still to be revoked at the CA for
// a revoked device.
func (s *Server) adminView(v *store.View) (coreapi.Device, error) {
	d := proxyView(v)
	d.Data = v.EffectiveData()
	d.OwnData = v.Data
	d.RegisteredBy = v.RegisteredBy
	created := v.CreatedAt
	d.CreatedAt = &created
	for _, c := range v.Certificates {
		d.Certificates = append(d.Certificates, coreapi.Certificate(c))
	}
	d.Held = v.Held
	report, err := s.reg.DeviceReport(v.Serial)
	if err != nil {
		return d, err
	}
	d.Report = report
	if v.Status != store.Revoked {
		return d, nil // only a revoke queues
	}
	pending, err := s.reg.PendingCARevocations(v.Serial)
	if err != nil {
		return d, err
	}
	for _, p := range pending {
		d.PendingCARevocations = append(d.PendingCARevocations, coreapi.PendingRevocation{Serial: p.Serial, Since: p.Since,
			Attempts: p.Attempts, LastError: p.LastError, NextAttempt: p.NextAttempt})
	}
	return d, nil
}

func writeEvents(w http.ResponseWriter, events []store.Event) error {
	out := make([]coreapi.Event, 0, len(events))
	for _, e := range events {
		out = append(out, coreapi.Event(e))
	}
	return httpapi.WriteJSON(w, http.StatusOK, out)
}
