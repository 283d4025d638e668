package service

import (
	"context"
	"fmt"
	"time"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
)

// caRevoker revokes at step-ca with core's revoke-only provisioner.
type caRevoker struct {
	prov   *token.Provisioner
	client *stepca.Client
}

func newRevoker(cfg *config.Config, client *stepca.Client) (*caRevoker, error) {
	pw, err := pki.ReadPasswordFile(cfg.CA.RevokerPasswordFile)
	if err != nil {
		return nil, fmt.Errorf("ca.revokerPasswordFile: %w", err)
	}
	prov, err := token.Load(stepca.RevokerProvisionerName, cfg.CA.RevokerKey, pw)
	if err != nil {
		return nil, fmt.Errorf("ca.revokerKey: %w", err)
	}
	return &caRevoker{prov: prov, client: client}, nil
}

func (r *caRevoker) Revoke(ctx context.Context, certSerial, reason string) error {
	tok, err := r.prov.RevokeToken(r.client.RevokeAudience(), certSerial, time.Now())
	if err != nil {
		return err
	}
	return r.client.Revoke(ctx, certSerial, tok, reason)
}
