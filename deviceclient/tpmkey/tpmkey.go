// Package tpmkey keeps the device's key in the board's TPM 2.0: the key is
// made inside the TPM under its storage root key and never leaves it; the
// state directory holds only the TPM's wrapped blob (key.tpm), which only
// this TPM can load. It also does the device's half of the attestation at
// enrollment: the endorsement key's certificate, an attestation key,
// credential activation and the certification of the device key.
//
// The TPM is "/dev/tpmrm0" (the kernel's resource manager) on a board, or
// "unix:PATH" for a software TPM's socket (swtpm, in tests). Pure Go
// (go-tpm): the device binary stays free of cgo.
package tpmkey

import (
	"crypto"
	"crypto/ecdsa"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"strings"
	"sync"
	"syscall"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// DefaultPath is a board's TPM: the kernel's resource manager, which lets
// several processes use the TPM and flushes what each loaded.
const DefaultPath = "/dev/tpmrm0"

// TPM is an open TPM. Its commands are serialised: a TPM answers one
// command at a time, and a transient handle is only good until it is
// flushed.
type TPM struct {
	Path string
	mu   sync.Mutex
	tr   transport.TPMCloser
}

// Open opens the TPM at path: a device node, or "unix:SOCKET".
func Open(path string) (*TPM, error) {
	if path == "" {
		path = DefaultPath
	}
	var (
		tr  transport.TPMCloser
		err error
	)
	if sock, ok := strings.CutPrefix(path, "unix:"); ok {
		tr, err = linuxudstpm.Open(sock)
	} else {
		tr, err = linuxtpm.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open the TPM at %s: %w", path, classify(err))
	}
	return &TPM{Path: path, tr: tr}, nil
}

// Close closes the TPM.
func (t *TPM) Close() error { return t.tr.Close() }

// classify wraps a TPM or transport error with ErrNoTPM or ErrTPMBusy
// where it is one of those.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENODEV),
		errors.Is(err, linuxtpm.ErrFileIsNotDevice), errors.Is(err, linuxudstpm.ErrFileIsNotSocket):
		return fmt.Errorf("%w: %w", ErrNoTPM, err)
	case errors.Is(err, syscall.EBUSY), errors.Is(err, tpm2.TPMRCRetry), errors.Is(err, tpm2.TPMRCYielded),
		errors.Is(err, tpm2.TPMRCTesting), errors.Is(err, tpm2.TPMRCObjectMemory):
		return fmt.Errorf("%w: %w", ErrTPMBusy, err)
	}
	return err
}

// srk makes the storage root key: the TCG's standard ECC P-256 template
// in the owner hierarchy. The same template in the same TPM gives the
// same key every time, so it is made again rather than persisted (no NV
// slot used, nothing to provision). The caller flushes it.
func (t *TPM) srk() (*tpm2.CreatePrimaryResponse, error) {
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("the TPM's storage root key: %w", classify(err))
	}
	return rsp, nil
}

// underSRK runs fn with the storage root key made and flushes it after;
// t.mu is held.
func (t *TPM) underSRK(fn func(srk *tpm2.CreatePrimaryResponse, parent tpm2.AuthHandle) error) error {
	srk, err := t.srk()
	if err != nil {
		return err
	}
	defer t.flush(srk.ObjectHandle)
	return fn(srk, tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)})
}

func (t *TPM) flush(h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(t.tr) // a handle already gone (a TPM reset) is gone
}

// keyTemplate is the device key: ECDSA P-256 with SHA-256, made in the
// TPM (sensitiveDataOrigin), never to leave it (fixedTPM, fixedParent), a
// signing key that is neither restricted (it signs TLS handshakes and
// CSRs, not only TPM-made structures) nor a decryption key.
var keyTemplate = signingTemplate(false)

// signingTemplate is an ECDSA P-256 SHA-256 signing key made in the TPM
// and bound to it and to its parent; restricted, it signs only what the
// TPM made itself (an attestation key).
func signingTemplate(restricted bool) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                restricted,
			Restricted:          restricted,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
		}),
	}
}

// Blob is the device key as the state directory keeps it (key.tpm): the
// key's public area and its private area wrapped by the storage root key
// (only the TPM that made it can unwrap it), the name of that storage
// root key (to tell another board's TPM from a damaged blob), and the
// TPM's path.
//
// The file is JSON, byte fields base64 (standard, padded):
//
//	{"format": "prov-tpm-key/1", "tpm": "/dev/tpmrm0",
//	 "parent": "<hex: the SRK's TPM name>",
//	 "public": "<TPM2B_PUBLIC>", "private": "<TPM2B_PRIVATE>"}
type Blob struct {
	Format  string `json:"format"`
	TPM     string `json:"tpm"`
	Parent  string `json:"parent"`
	Public  []byte `json:"public"`
	Private []byte `json:"private"`
}

// FormatV1 is Blob.Format.
const FormatV1 = "prov-tpm-key/1"

// Marshal is the blob's file.
func (b *Blob) Marshal() []byte {
	data, _ := json.MarshalIndent(b, "", "  ") // strings and bytes: cannot fail
	return append(data, '\n')
}

// ParseBlob reads a key.tpm file.
func ParseBlob(data []byte) (*Blob, error) {
	var b Blob
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeyFile, err)
	}
	if b.Format != FormatV1 {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrBadKeyFile, b.Format, FormatV1)
	}
	if len(b.Public) == 0 || len(b.Private) == 0 {
		return nil, fmt.Errorf("%w: no public or private area", ErrBadKeyFile)
	}
	return &b, nil
}

// Create makes a new device key in the TPM and returns its blob.
func (t *TPM) Create() (*Blob, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b *Blob
	err := t.underSRK(func(srk *tpm2.CreatePrimaryResponse, parent tpm2.AuthHandle) error {
		rsp, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(keyTemplate)}.Execute(t.tr)
		if err != nil {
			return fmt.Errorf("create the device key in the TPM: %w", classify(err))
		}
		b = &Blob{Format: FormatV1, TPM: t.Path, Parent: hex.EncodeToString(srk.Name.Buffer),
			Public: tpm2.Marshal(rsp.OutPublic), Private: tpm2.Marshal(rsp.OutPrivate)}
		return nil
	})
	return b, err
}

// Key is the device key loaded in the TPM: a crypto.Signer whose
// signatures are ASN.1 DER ECDSA, as crypto/ecdsa's.
type Key struct {
	tpm    *TPM
	blob   *Blob
	pub    *ecdsa.PublicKey
	public tpm2.TPM2BPublic
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	// own: Close closes the TPM too (OpenKey opened it).
	own    bool
	closed bool
}

// Load loads a blob made by this TPM. A blob of another TPM fails with
// ErrNotThisTPM.
func (t *TPM) Load(b *Blob) (*Key, error) {
	public, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: public area: %w", ErrBadKeyFile, err)
	}
	if _, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](b.Private); err != nil {
		return nil, fmt.Errorf("%w: private area: %w", ErrBadKeyFile, err)
	}
	area, err := public.Contents()
	if err != nil {
		return nil, fmt.Errorf("%w: public area: %w", ErrBadKeyFile, err)
	}
	pub, err := tpm2.Pub(*area)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %w", ErrBadKeyFile, err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: a %T key, want ECDSA", ErrBadKeyFile, pub)
	}
	k := &Key{tpm: t, blob: b, pub: ec, public: *public}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

// load loads the key under a fresh SRK; t.mu is held.
func (k *Key) load() error {
	t := k.tpm
	return t.underSRK(func(srk *tpm2.CreatePrimaryResponse, parent tpm2.AuthHandle) error {
		if k.blob.Parent != "" && k.blob.Parent != hex.EncodeToString(srk.Name.Buffer) {
			return fmt.Errorf("%w: its storage root key is not this TPM's", ErrNotThisTPM)
		}
		priv, _ := tpm2.Unmarshal[tpm2.TPM2BPrivate](k.blob.Private) // checked in Load
		rsp, err := tpm2.Load{ParentHandle: parent, InPrivate: *priv, InPublic: k.public}.Execute(t.tr)
		if err != nil {
			// The private area is wrapped with a key derived from the
			// parent's seed: under another TPM's SRK its integrity
			// check fails.
			if errors.Is(err, tpm2.TPMRCIntegrity) {
				return fmt.Errorf("%w: %w", ErrNotThisTPM, err)
			}
			return fmt.Errorf("load the device key into the TPM: %w", classify(err))
		}
		k.handle, k.name = rsp.ObjectHandle, rsp.Name
		return nil
	})
}

// OpenKey opens the TPM a key.tpm file names (or tpmPath if set: a board
// whose TPM moved to another node) and loads the key; Close closes both.
func OpenKey(keyFile []byte, tpmPath string) (*Key, error) {
	b, err := ParseBlob(keyFile)
	if err != nil {
		return nil, err
	}
	if tpmPath == "" {
		tpmPath = b.TPM
	}
	t, err := Open(tpmPath)
	if err != nil {
		return nil, err
	}
	k, err := t.Load(b)
	if err != nil {
		_ = t.Close()
		return nil, err
	}
	k.own = true
	return k, nil
}

// TPM is the TPM the key is loaded in.
func (k *Key) TPM() *TPM { return k.tpm }

// Public is the key's public key (an *ecdsa.PublicKey).
func (k *Key) Public() crypto.PublicKey { return k.pub }

// PublicArea is the key's TPM2B_PUBLIC.
func (k *Key) PublicArea() []byte { return tpm2.Marshal(k.public) }

// Attributes are the key's object attributes, as its public area says.
func (k *Key) Attributes() tpm2.TPMAObject {
	area, _ := k.public.Contents() // parsed in Load
	return area.ObjectAttributes
}

// Sign signs a SHA-256 digest in the TPM. The key's scheme is ECDSA with
// SHA-256 (all a P-256 key signs in TLS 1.3 and X.509); another hash is
// refused.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != crypto.SHA256.Size() {
		return nil, fmt.Errorf("the TPM device key signs SHA-256 digests only, not %v", opts.HashFunc())
	}
	k.tpm.mu.Lock()
	defer k.tpm.mu.Unlock()
	rsp, err := k.sign(digest)
	if err != nil && k.stale() {
		// The TPM was reset (a swtpm restart; a board's TPM resets
		// with the board, and this process with it): load the key again.
		if err := k.load(); err != nil {
			return nil, err
		}
		rsp, err = k.sign(digest)
	}
	if err != nil {
		return nil, fmt.Errorf("sign with the TPM device key: %w", classify(err))
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("sign with the TPM device key: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig.SignatureR.Buffer), new(big.Int).SetBytes(sig.SignatureS.Buffer)})
}

func (k *Key) sign(digest []byte) (*tpm2.SignResponse, error) {
	return tpm2.Sign{KeyHandle: tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)},
		Digest: tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull}}.Execute(k.tpm.tr)
}

// stale reports whether the key's handle no longer names it.
func (k *Key) stale() bool {
	rsp, err := tpm2.ReadPublic{ObjectHandle: k.handle}.Execute(k.tpm.tr)
	return err != nil || string(rsp.Name.Buffer) != string(k.name.Buffer)
}

// Close unloads the key (and closes the TPM if OpenKey opened it).
// A second Close does nothing: the handle may name another object by
// then.
func (k *Key) Close() error {
	k.tpm.mu.Lock()
	closed := k.closed
	if !closed {
		k.tpm.flush(k.handle)
		k.closed = true
	}
	k.tpm.mu.Unlock()
	if k.own && !closed {
		return k.tpm.Close()
	}
	return nil
}
