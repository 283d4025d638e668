package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/batchreport"
	"github.com/fleetprov/prov/proxy/status"
)

// newConsole makes the factory console: the batches of the vouching
// policy, the stations of console.stations.
func (p *proxy) newConsole() error {
	stations, err := p.cfg.Stations()
	if err != nil {
		return err
	}
	var plans []status.Plan
	for _, b := range p.policy.Batches() {
		plans = append(plans, status.Plan{Name: b.Name, Planned: b.Size, Quota: b.Quota, NotBefore: b.NotBefore, NotAfter: b.NotAfter})
	}
	p.console = status.NewConsole(plans, stations)
	return nil
}

// watchHealth fills the console's health panel now and every
// console.checkEvery until ctx ends; the checks run beside enrollments,
// never on their path.
func (p *proxy) watchHealth(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Console.CheckEvery)
	defer t.Stop()
	for {
		p.console.SetHealth(p.checkHealth(ctx))
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// checkHealth checks what the health panel shows, each check bounded by
// probeTimeout.
func (p *proxy) checkHealth(ctx context.Context) status.Health {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	h := status.Health{Checked: time.Now().UTC()}
	for _, u := range p.upstreams {
		began := time.Now()
		var err error
		if u.name == "core" {
			var off time.Duration
			if off, err = coreClock(ctx, p.coreHTTP, u.url); err == nil {
				ms := off.Milliseconds()
				h.ClockOffsetMs = &ms
			}
		} else {
			err = u.health(ctx)
		}
		up := status.Upstream{Name: u.name, URL: u.url, OK: err == nil, LatencyMs: float64(time.Since(began).Microseconds()) / 1000}
		if err != nil {
			up.Error = publicError(err)
		}
		h.Upstreams = append(h.Upstreams, up)
	}
	leaf := p.self.KeyPair.Leaf()
	h.Certificates = append(h.Certificates, status.Certificate{Name: "identity", Subject: p.self.ID.String(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter})
	h.Certificates = append(h.Certificates, p.consoleHealth()...)
	h.Provisioner = status.Provisioner{Name: p.prov.Name(), KeyID: p.prov.KeyID()}
	switch info, err := p.caClient.Provisioner(ctx, p.prov.Name()); {
	case err != nil:
		h.Provisioner.Error = publicError(err)
	case info.KeyID != p.prov.KeyID():
		h.Provisioner.Error = fmt.Sprintf("step-ca has %s with another key (%s, this proxy holds %s): every signature will fail", info.Name, info.KeyID, p.prov.KeyID())
	default:
		h.Provisioner.OK, h.Provisioner.Lifetime = true, info.DefaultLifetime
	}
	h.Record = status.Record{Path: p.cfg.Record.Path, VerifiedAt: time.Now().UTC()}
	if seq, _, err := auditlog.Verify(p.cfg.Record.Path); err != nil {
		h.Record.Error = err.Error()
	} else {
		h.Record.Verified, h.Record.VerifiedSeq = true, seq
	}
	return h
}

// publicError is an upstream's error for the console: the factory network
// sees it, and it names the failure without the proxy's internals.
func publicError(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", probeTimeout)
	case wrongIdentity(err):
		return "answers with a certificate that is not its own"
	}
	return err.Error()
}

// report exports a batch's signed report for the console (server.Options.Report).
func (p *proxy) report(batch string, format batchreport.Format) (string, []byte, error) {
	size := -1
	for _, b := range p.policy.Batches() {
		if b.Name == batch {
			size = b.Size
		}
	}
	if size < 0 {
		return "", nil, httpapi.NewError(http.StatusNotFound, coreapi.CodeNotFound, fmt.Sprintf("batch %q is not one of this proxy's batches", batch), nil)
	}
	now := time.Now()
	data, err := batchreport.Export(p.cfg.Record.Path, batch, size, format, now)
	if err != nil {
		return "", nil, err
	}
	sig, chain, err := batchreport.SignWith(data, p.self.KeyPair.Certificate())
	if err != nil {
		return "", nil, err
	}
	name := batchreport.FileName(batch, format, now)
	zip, err := batchreport.Zip(name, data, sig, chain, now)
	if err != nil {
		return "", nil, err
	}
	p.log.Info("batch report exported from the console", "batch", batch, "format", string(format), "bytes", len(data))
	return name + ".zip", zip, nil
}
