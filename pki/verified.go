package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"time"
)

// maxVerifiedChains bounds the memo; past it, it starts over.
const maxVerifiedChains = 4096

// verifiedChains remembers chains that x509 verification accepted, with the
// window in which the path it built is valid. Path building is a pure
// function of the chain, the pinned roots (fixed for a bundle), the key
// usage and the time, and the time enters only through each certificate's
// validity; so a chain accepted once is accepted again at any time inside
// that window, and the memo answers without the two or three signature
// checks. The proxy and devices see the same signer chain on every bundle.
// (TLS handshakes do not use the memo.) Identity and role checks still run on every call; revocation is not part
// of path verification and is checked where it was before.
type verifiedChains struct {
	mu sync.Mutex
	m  map[[32]byte]window
}

type window struct{ notBefore, notAfter time.Time }

func newVerifiedChains() *verifiedChains { return &verifiedChains{m: map[[32]byte]window{}} }

// chainKey names a chain as presented, with the usage it was checked for.
func chainKey(chain []*x509.Certificate, usage x509.ExtKeyUsage) [32]byte {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(usage)) //nolint:gosec // an enum
	h.Write(n[:])
	for _, c := range chain {
		binary.BigEndian.PutUint64(n[:], uint64(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// lookup returns the window of a remembered chain if at falls inside it.
func (v *verifiedChains) lookup(key [32]byte, at time.Time) (window, bool) {
	v.mu.Lock()
	w, ok := v.m[key]
	v.mu.Unlock()
	return w, ok && !at.Before(w.notBefore) && !at.After(w.notAfter)
}

// add remembers the window of path, the verified chain from leaf to root,
// and returns it.
func (v *verifiedChains) add(key [32]byte, path []*x509.Certificate) window {
	w := pathWindow(path)
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.m) >= maxVerifiedChains {
		clear(v.m)
	}
	v.m[key] = w
	return w
}
