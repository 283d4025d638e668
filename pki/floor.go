package pki

import (
	"crypto/x509"
	"errors"
	"sync"
	"time"
)

// Floor is the earliest time a verifier without a trustworthy clock can
// believe it is. Boards without a real-time clock boot in 1970; verifying
// at the floor instead makes them neither accept what expired before it
// nor refuse what is valid.
//
// The floor only rises. Its sources are the caller's (the binary's build
// time, the last accepted bundle's issue time) and the chains verified
// with it: a certificate that chains to the pinned root and was issued at
// T proves the time is at least T, so a chain that does not verify at the
// floor is tried again at its own latest NotBefore, and one that then
// verifies (with the key usage and roles the caller asked for, and not
// expired at that time: a raise never moves a check past an expiry)
// raises the floor to that NotBefore.
//
// What an attacker gains: only the pinned root's CA issues chains that
// raise the floor, so nobody else can move it. What remains: a verifier
// without a clock cannot tell a certificate that is old but unexpired at
// its floor (a server certificate since replaced, a signer since rotated,
// short of revocation, which the device does not check) from a current
// one; and a certificate the CA issued with a NotBefore in the future
// moves every floor that sees it there, after which certificates that
// expire before it are refused.
//
// A nil *Floor is no floor: verification uses the clock alone, and a chain
// is never checked at its own issue time (servers with real clocks).
type Floor struct {
	mu      sync.Mutex
	t       time.Time
	persist func(time.Time) error
}

// NewFloor is a floor at t. persist, if not nil, is called with every new
// value, under the floor's lock, so values reach it in rising order.
func NewFloor(t time.Time, persist func(time.Time) error) *Floor {
	return &Floor{t: t, persist: persist}
}

// Time is the floor (zero for a nil Floor).
func (f *Floor) Time() time.Time {
	if f == nil {
		return time.Time{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

// At is now, never before the floor: the time to verify at.
func (f *Floor) At(now time.Time) time.Time {
	if t := f.Time(); now.Before(t) {
		return t
	}
	return now
}

// Raise moves the floor up to t; a t not after the floor changes nothing.
// If persisting fails the floor stays raised in memory and the error is
// returned; a nil Floor ignores the call.
func (f *Floor) Raise(t time.Time) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !t.After(f.t) {
		return nil
	}
	f.t = t
	if f.persist == nil {
		return nil
	}
	return f.persist(t)
}

// verifyAt verifies a chain at the floor's time and, when that fails and a
// floor is given, again at the chain's own latest NotBefore if that is
// later. verify checks the chain at a time and returns the verified path's
// validity window. When both fail, the second error says why (another
// root, another usage), unless it too is about validity: then the first,
// which names the time the caller believes it is.
func verifyAt(chain []*x509.Certificate, now time.Time, floor *Floor, verify func(at time.Time) (window, error)) (window, error) {
	at := floor.At(now)
	w, err := verify(at)
	if err == nil || floor == nil {
		return w, err
	}
	issued := latestNotBefore(chain)
	if !issued.After(at) {
		return w, err
	}
	w2, err2 := verify(issued)
	if err2 == nil || !errors.Is(err2, ErrExpired) {
		return w2, err2
	}
	return w, err
}

// latestNotBefore is the latest issue time among the certificates given.
// Only a path that verifies at that time counts, and the floor is raised to
// that path's own latest NotBefore, never to a certificate outside it.
func latestNotBefore(certs []*x509.Certificate) time.Time {
	var t time.Time
	for _, c := range certs {
		if c.NotBefore.After(t) {
			t = c.NotBefore
		}
	}
	return t
}

// pathWindow is when every certificate of a verified path (leaf to root)
// is valid: from the latest NotBefore to the earliest NotAfter.
func pathWindow(path []*x509.Certificate) window {
	w := window{notBefore: path[0].NotBefore, notAfter: path[0].NotAfter}
	for _, c := range path[1:] {
		if c.NotBefore.After(w.notBefore) {
			w.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(w.notAfter) {
			w.notAfter = c.NotAfter
		}
	}
	return w
}
