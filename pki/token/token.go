// Package token mints the one-time tokens that step-ca's JWK provisioners
// accept: a proxy's token asks for one device certificate, bound to the
// device's serial and to its CSR; the admin provisioner's token asks for a
// service certificate or a revocation.
//
// A provisioner key lives on disk as a password-encrypted JWE (step's own
// format, PBES2-HS256+A128KW), never in plain text.
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
)

// MaxTTL is the longest life of a token: tokens are minted just before use.
const MaxTTL = 5 * time.Minute

// ErrBadKey: the provisioner key file is missing, not encrypted, not
// decryptable with the password, or not a signing key.
var ErrBadKey = errors.New("bad provisioner key")

// Provisioner is a JWK provisioner's private signing key and its name in
// the CA configuration (the token issuer).
type Provisioner struct {
	name string
	key  *jose.JSONWebKey
}

// Generate makes a new provisioner key (ECDSA P-256, ES256, the key ID is its
// thumbprint, as step-ca expects).
func Generate(name string) (*Provisioner, error) {
	if name == "" {
		return nil, errors.New("provisioner name is empty")
	}
	k, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		return nil, fmt.Errorf("generate provisioner key: %w", err)
	}
	return &Provisioner{name: name, key: k}, nil
}

// Name is the provisioner's name in the CA configuration.
func (p *Provisioner) Name() string { return p.name }

// KeyID is the key's ID, its JWK thumbprint.
func (p *Provisioner) KeyID() string { return p.key.KeyID }

// PublicKey is the public half, for the CA configuration.
func (p *Provisioner) PublicKey() *jose.JSONWebKey {
	pub := p.key.Public()
	return &pub
}

// Encrypt returns the private key as a compact JWE under password.
func (p *Provisioner) Encrypt(password []byte) ([]byte, error) {
	if len(password) == 0 {
		return nil, errors.New("encrypt provisioner key: empty password")
	}
	jwe, err := jose.EncryptJWK(p.key, password)
	if err != nil {
		return nil, fmt.Errorf("encrypt provisioner key: %w", err)
	}
	s, err := jwe.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("encrypt provisioner key: %w", err)
	}
	return []byte(s), nil
}

// Decrypt parses an encrypted provisioner key. Plain keys are refused.
func Decrypt(name string, jwe, password []byte) (*Provisioner, error) {
	enc, err := jose.ParseEncrypted(strings.TrimSpace(string(jwe)))
	if err != nil {
		return nil, fmt.Errorf("%w: not an encrypted JWE: %w", ErrBadKey, err)
	}
	plain, err := enc.Decrypt(password)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot decrypt (wrong password?)", ErrBadKey)
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(plain, &k); err != nil {
		return nil, fmt.Errorf("%w: decrypted content is not a JWK: %w", ErrBadKey, err)
	}
	if k.IsPublic() || k.KeyID == "" {
		return nil, fmt.Errorf("%w: not a private signing key with a key ID", ErrBadKey)
	}
	return &Provisioner{name: name, key: &k}, nil
}

// Load reads an encrypted provisioner key file.
func Load(name, keyFile string, password []byte) (*Provisioner, error) {
	data, err := os.ReadFile(keyFile) //nolint:gosec // path from the operator's configuration
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	p, err := Decrypt(name, data, password)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	return p, nil
}

// SignRequest is what a sign token asks for.
type SignRequest struct {
	// Audience is the CA's sign URL, https://<ca-host>/1.0/sign.
	Audience string
	// Subject becomes the certificate's CN.
	Subject string
	// SANs are the names the certificate must carry (the identity URI and,
	// for servers, host names).
	SANs []string
	// CSR binds the token to one certificate request, and so to its key
	// (the cnf claim, x5rt#S256 over the CSR's DER).
	CSR *x509.CertificateRequest
	// TTL is the token's life, at most MaxTTL; zero means MaxTTL.
	TTL time.Duration
	// EKSHA256, if set, says the CSR's key was attested resident in the
	// TPM whose endorsement key this is (the "tpm" claim, which the device
	// template turns into the TPM key policy).
	EKSHA256 string
}

type claims struct {
	jose.Claims
	SANs []string  `json:"sans,omitempty"`
	Cnf  *cnf      `json:"cnf,omitempty"`
	TPM  *tpmClaim `json:"tpm,omitempty"`
}

type tpmClaim struct {
	EKSHA256 string `json:"ekSha256"`
}

type cnf struct {
	Fingerprint string `json:"x5rt#S256"`
}

// SignToken mints a single-use sign token.
func (p *Provisioner) SignToken(r SignRequest, now time.Time) (string, error) {
	if r.CSR == nil {
		return "", errors.New("sign token: no CSR to bind to")
	}
	sum := sha256.Sum256(r.CSR.Raw)
	c, err := p.baseClaims(r.Audience, r.Subject, r.TTL, now)
	if err != nil {
		return "", err
	}
	c.SANs = r.SANs
	c.Cnf = &cnf{Fingerprint: base64.RawURLEncoding.EncodeToString(sum[:])}
	if r.EKSHA256 != "" {
		c.TPM = &tpmClaim{EKSHA256: r.EKSHA256}
	}
	return p.sign(c)
}

// RevokeToken mints a single-use token to revoke the certificate with the
// given serial number (decimal, as step-ca writes it).
func (p *Provisioner) RevokeToken(audience, serial string, now time.Time) (string, error) {
	c, err := p.baseClaims(audience, serial, 0, now)
	if err != nil {
		return "", err
	}
	return p.sign(c)
}

func (p *Provisioner) baseClaims(audience, subject string, ttl time.Duration, now time.Time) (*claims, error) {
	switch {
	case audience == "":
		return nil, errors.New("token: empty audience")
	case subject == "":
		return nil, errors.New("token: empty subject")
	case ttl < 0 || ttl > MaxTTL:
		return nil, fmt.Errorf("token: TTL %s outside (0, %s]", ttl, MaxTTL)
	case ttl == 0:
		ttl = MaxTTL
	}
	jti, err := randomID()
	if err != nil {
		return nil, err
	}
	return &claims{Claims: jose.Claims{
		Issuer:    p.name,
		Subject:   subject,
		Audience:  jose.Audience{audience},
		IssuedAt:  jose.NewNumericDate(now),
		NotBefore: jose.NewNumericDate(now),
		Expiry:    jose.NewNumericDate(now.Add(ttl)),
		ID:        jti,
	}}, nil
}

func (p *Provisioner) sign(c *claims) (string, error) {
	so := new(jose.SignerOptions).WithType("JWT").WithHeader("kid", p.key.KeyID)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(p.key.Algorithm), Key: p.key.Key}, so)
	if err != nil {
		return "", fmt.Errorf("token signer: %w", err)
	}
	tok, err := jose.Signed(s).Claims(c).CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return tok, nil
}

func randomID() (string, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		return "", fmt.Errorf("token ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}
