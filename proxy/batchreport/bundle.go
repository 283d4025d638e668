package batchreport

import (
	"archive/zip"
	"bytes"
	"crypto"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"strings"
	"time"
)

// SignWith signs a report file's bytes with the key of cert (the proxy's
// key pair, as loaded) and returns the signature and cert's chain as PEM,
// leaf first: the FILE.sig and FILE.pem beside a report.
func SignWith(data []byte, cert *tls.Certificate) (sig, chainPEM []byte, err error) {
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%w: a %T", ErrNotProxyKey, cert.PrivateKey)
	}
	if sig, err = Sign(data, key); err != nil {
		return nil, nil, err
	}
	for _, der := range cert.Certificate {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return sig, chainPEM, nil
}

// FileName is a report's file name: the batch (any character outside
// A-Z, a-z, 0-9, '.', '_' and '-' as '_') and the export time.
func FileName(batch string, format Format, at time.Time) string {
	safe := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '_'
	}, batch)
	return fmt.Sprintf("report-%s-%s.%s", safe, at.UTC().Format("20060102T150405Z"), format)
}

// Zip packs a report file, its signature and chain as the command line
// writes them (NAME, NAME.sig, NAME.pem), for a download from the console.
func Zip(name string, data, sig, chainPEM []byte, at time.Time) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range []struct {
		name string
		data []byte
	}{{name, data}, {name + ".sig", sig}, {name + ".pem", chainPEM}} {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: f.name, Method: zip.Deflate, Modified: at})
		if err != nil {
			return nil, fmt.Errorf("zip the report: %w", err)
		}
		if _, err := w.Write(f.data); err != nil {
			return nil, fmt.Errorf("zip the report: %w", err)
		}
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("zip the report: %w", err)
	}
	return buf.Bytes(), nil
}
