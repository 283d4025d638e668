package deployment

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"go.step.sm/crypto/pemutil"

	"github.com/fleetprov/prov/internal/atomicfile"
)

// Modes of what init and issue write.
const (
	dirMode    = 0o700
	secretMode = 0o600
	publicMode = 0o644
)

// writeFile writes data durably (internal/atomicfile), creating the
// parent directory with dirMode.
func writeFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return atomicfile.WriteFile(path, data, mode)
}

// certsPEM encodes certificates as consecutive PEM blocks.
func certsPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// keyPEM encodes a private key as PKCS#8 PEM, encrypted (PBES2, AES-256)
// when password is not empty.
func keyPEM(key crypto.PrivateKey, password []byte) ([]byte, error) {
	opts := []pemutil.Options{pemutil.WithPKCS8(true)}
	if len(password) > 0 {
		opts = append(opts, pemutil.WithPassword(password))
	}
	block, err := pemutil.Serialize(key, opts...)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

// writeKey writes a private key with secretMode.
func writeKey(path string, key crypto.PrivateKey, password []byte) error {
	data, err := keyPEM(key, password)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return writeFile(path, data, secretMode)
}
