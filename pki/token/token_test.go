package token_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/fleetprov/prov/pki/token"
)

func csr(t *testing.T) *x509.CertificateRequest {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSignTokenClaims(t *testing.T) {
	p, err := token.Generate("proxy-a")
	if err != nil {
		t.Fatal(err)
	}
	r := csr(t)
	now := time.Now()
	tok, err := p.SignToken(token.SignRequest{Audience: "https://ca/1.0/sign", Subject: "1a2b3c4d5e", SANs: []string{"spiffe://x/device/1a2b3c4d5e"}, CSR: r}, now)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := jose.ParseSigned(tok)
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		jose.Claims
		SANs []string          `json:"sans"`
		Cnf  map[string]string `json:"cnf"`
	}
	if err := jwt.Claims(p.PublicKey(), &claims); err != nil {
		t.Fatalf("token does not verify with the provisioner's public key: %v", err)
	}
	sum := sha256.Sum256(r.Raw)
	switch {
	case claims.Issuer != "proxy-a", claims.Subject != "1a2b3c4d5e", claims.ID == "":
		t.Errorf("claims %+v", claims.Claims)
	case claims.Expiry.Time().Sub(now) > token.MaxTTL+time.Second:
		t.Errorf("expiry %v is more than %v away", claims.Expiry.Time(), token.MaxTTL)
	case claims.Cnf["x5rt#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]):
		t.Errorf("cnf %v is not the CSR's fingerprint", claims.Cnf)
	case jwt.Headers[0].KeyID != p.KeyID():
		t.Errorf("kid %q; want %q", jwt.Headers[0].KeyID, p.KeyID())
	}
	tok2, err := p.SignToken(token.SignRequest{Audience: "https://ca/1.0/sign", Subject: "1a2b3c4d5e", CSR: r}, now)
	if err != nil {
		t.Fatal(err)
	}
	if tok2 == tok {
		t.Error("two tokens are identical: the jti is not unique")
	}
	for name, req := range map[string]token.SignRequest{
		"no CSR":       {Audience: "a", Subject: "s"},
		"no audience":  {Subject: "s", CSR: r},
		"no subject":   {Audience: "a", CSR: r},
		"TTL too long": {Audience: "a", Subject: "s", CSR: r, TTL: time.Hour},
	} {
		if _, err := p.SignToken(req, now); err == nil {
			t.Errorf("%s: token minted", name)
		}
	}
}

func TestDecrypt(t *testing.T) {
	p, err := token.Generate("admin")
	if err != nil {
		t.Fatal(err)
	}
	jwe, err := p.Encrypt([]byte("password"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := token.Decrypt("admin", jwe, []byte("password"))
	if err != nil || q.KeyID() != p.KeyID() {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := token.Decrypt("admin", jwe, []byte("wrong")); !errors.Is(err, token.ErrBadKey) {
		t.Errorf("wrong password: %v", err)
	}
	// A plain (unencrypted) JWK is refused, even though step's own
	// jose.Decrypt would pass it through.
	plain, err := json.Marshal(p.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := token.Decrypt("admin", plain, []byte("password")); !errors.Is(err, token.ErrBadKey) {
		t.Errorf("plain JWK: %v", err)
	}
	// An encrypted public key is not a signing key.
	pubJWE, err := jose.EncryptJWK(p.PublicKey(), []byte("password"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := pubJWE.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := token.Decrypt("admin", []byte(s), []byte("password")); !errors.Is(err, token.ErrBadKey) {
		t.Errorf("encrypted public key: %v", err)
	}
	if _, err := p.Encrypt(nil); err == nil {
		t.Error("encrypted with an empty password")
	}
}
