// Package ca embeds step-ca (github.com/smallstep/certificates): the online
// CA server that prov-pki ca runs, and an in-process authority that prov-pki
// init issues the first certificates with before any server exists.
//
// This package is heavy (step-ca's authority, its databases, KMS code); only
// prov-pki and tests link it. Every other binary talks to a running CA with
// the light client in pki/stepca, and its dependency guard (deps_test.go
// beside its main) fails if it links this package.
package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	stepca "github.com/smallstep/certificates/ca"
)

// Server is step-ca running in this process.
type Server struct {
	ca  *stepca.CA
	cfg *config.Config
}

// LoadConfig reads and validates a step-ca configuration file.
func LoadConfig(configFile string) (*config.Config, error) {
	cfg, err := config.LoadConfiguration(configFile)
	if err != nil {
		return nil, fmt.Errorf("load CA configuration: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("CA configuration %s: %w", configFile, err)
	}
	return cfg, nil
}

// ServerOption adjusts a Server; for tests.
type ServerOption func(*config.Config)

// WithoutRequestLog turns off step-ca's per-request log, which tests that
// make hundreds of requests do not want on their output.
func WithoutRequestLog() ServerOption {
	return func(c *config.Config) { c.Logger = nil }
}

// NewServer prepares step-ca from its configuration file; password decrypts
// the intermediate key. Nothing listens until Run.
func NewServer(configFile string, password []byte, opts ...ServerOption) (*Server, error) {
	cfg, err := LoadConfig(configFile)
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(cfg)
	}
	c, err := stepca.New(cfg,
		stepca.WithConfigFile(configFile),
		stepca.WithPassword(password),
		stepca.WithQuiet(true))
	if err != nil {
		return nil, fmt.Errorf("start step-ca from %s: %w", configFile, explain(err))
	}
	// After step-ca made its tables: the guard is a trigger on one.
	if err := GuardTokenReplay(context.Background(), cfg.DB); err != nil {
		_ = c.Stop() // nothing listens yet; this closes its database
		return nil, fmt.Errorf("start step-ca from %s: %w", configFile, err)
	}
	return &Server{ca: c, cfg: cfg}, nil
}

// Address is the configured listen address.
func (s *Server) Address() string { return s.cfg.Address }

// Run serves until ctx ends, then stops step-ca cleanly.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.ca.Run() }()
	select {
	case err := <-errc:
		// step-ca stops itself when a listener fails.
		return fmt.Errorf("step-ca: %w", err)
	case <-ctx.Done():
	}
	select {
	case err := <-errc: // it failed just as we were told to stop
		return fmt.Errorf("step-ca: %w", err)
	default:
	}
	stopErr := s.ca.Stop()
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("step-ca: %w", err)
	}
	if stopErr != nil {
		return fmt.Errorf("stop step-ca: %w", stopErr)
	}
	return nil
}

// Authority is step-ca's authority without a server, for signing while no
// CA runs (the first certificates of prov-pki init). It holds the CA
// database open; Close it.
type Authority struct {
	a        *authority.Authority
	audience string
}

// OpenAuthority loads the CA from its configuration in this process.
func OpenAuthority(configFile string, password []byte) (*Authority, error) {
	cfg, err := LoadConfig(configFile)
	if err != nil {
		return nil, err
	}
	a, err := authority.New(cfg, authority.WithPassword(password), authority.WithQuietInit())
	if err != nil {
		return nil, fmt.Errorf("open CA authority from %s: %w", configFile, explain(err))
	}
	if err := GuardTokenReplay(context.Background(), cfg.DB); err != nil {
		_ = a.Shutdown()
		return nil, fmt.Errorf("open CA authority from %s: %w", configFile, err)
	}
	if len(cfg.DNSNames) == 0 {
		_ = a.Shutdown()
		return nil, fmt.Errorf("CA configuration %s: no dnsNames", configFile)
	}
	aud := (&url.URL{Scheme: "https", Host: cfg.DNSNames[0], Path: "/1.0/sign"}).String()
	return &Authority{a: a, audience: aud}, nil
}

// SignAudience is an audience this authority accepts in sign tokens.
func (a *Authority) SignAudience() string { return a.audience }

// Sign authorises the one-time token and signs the CSR exactly as the
// /1.0/sign endpoint does; it returns the leaf and its intermediate.
func (a *Authority) Sign(ctx context.Context, csr *x509.CertificateRequest, ott string) ([]*x509.Certificate, error) {
	ctx = provisioner.NewContextWithMethod(ctx, provisioner.SignMethod)
	opts, err := a.a.Authorize(ctx, ott)
	if err != nil {
		return nil, fmt.Errorf("authorise sign token: %w", err)
	}
	chain, err := a.a.SignWithContext(ctx, csr, provisioner.SignOptions{}, opts...)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return chain, nil
}

// Close releases the CA database.
func (a *Authority) Close() error {
	if err := a.a.Shutdown(); err != nil {
		return fmt.Errorf("close CA authority: %w", err)
	}
	return nil
}

// explain adds the likely cause to step-ca's terse start-up errors.
func explain(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "timeout") && strings.Contains(msg, "db"), strings.Contains(msg, "timeout") && strings.Contains(msg, "bolt"):
		return fmt.Errorf("%w (the CA database is locked: is the CA already running?)", err)
	case strings.Contains(msg, "decrypt"), strings.Contains(msg, "password"):
		return fmt.Errorf("%w (wrong password for the intermediate key?)", err)
	case strings.Contains(msg, "error parsing") && strings.Contains(msg, ".key"):
		// A wrong password decrypts a legacy PEM block to garbage about
		// once in 256 tries (the padding happens to check out); the
		// garbage then fails to parse.
		return fmt.Errorf("%w (wrong password for the intermediate key, or a damaged key file?)", err)
	}
	return err
}
