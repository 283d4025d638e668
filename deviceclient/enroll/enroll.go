// Package enroll is a new device's first contact: on the factory network
// it makes its own key, sends a CSR that names nothing with its board and
// hardware ID to the factory proxy (whose certificate it checks against
// the root baked into the rootfs), checks the answer (the certificate is
// for its key and is exactly the identity its serial rule gives), stores
// it, and installs the first bundle exactly as an update would.
package enroll

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// Errors a caller tells apart.
var (
	ErrAlreadyEnrolled = errors.New("already enrolled")
	ErrRefused         = errors.New("the proxy refused the enrollment")
	ErrBadAnswer       = errors.New("the proxy's answer is not acceptable")
)

// KeyKind is where the device's key is.
type KeyKind string

// Key kinds (prov-device enroll --key).
const (
	KeyFile KeyKind = "file"
	KeyTPM  KeyKind = "tpm"
)

// maxAnswer bounds the proxy's answer: a base64 bundle and a chain.
const maxAnswer = 4 << 20

// Options are the enrollment's inputs.
type Options struct {
	ProxyURL string
	RootPEM  []byte
	ID       hwid.ID
	// Force enrolls again a device that is enrolled (a lost certificate);
	// the proxy's re-enrollment policy decides.
	Force bool
	// Install is what the first bundle is checked against; Roots and
	// Serial are set here. Its Floor (nil: the state directory's) is also
	// the floor the proxy's certificate and the device's own are checked
	// at.
	Install install.Options
	// Key is where the device's key is made: KeyFile (key.pem) or
	// KeyTPM (in the TPM at TPM, key.tpm keeps its wrapped blob; the
	// enrollment then proves it resident with an attestation).
	Key     KeyKind
	TPM     string        // "" is tpmkey.DefaultPath
	Timeout time.Duration // the whole exchange; default 2 minutes
	Client  *http.Client  // a test seam; nil: TLS to the proxy, root pinned
}

// Enroll enrolls the device and installs its first bundle.
func Enroll(ctx context.Context, st *state.Dir, o Options) (*state.Device, *install.Result, error) {
	roots, err := pki.ParseTrustBundle(o.RootPEM)
	if err != nil {
		return nil, nil, err
	}
	u, err := url.Parse(o.ProxyURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, nil, fmt.Errorf("--proxy %q: want https://host:port", o.ProxyURL)
	}
	if dev, err := st.Device(); err == nil {
		if err := dev.CheckID(o.ID.Board, o.ID.Canonical); err != nil {
			return nil, nil, err
		}
		if !o.Force {
			return nil, nil, fmt.Errorf("%w as %s (use --force to enroll again; the proxy's policy decides)", ErrAlreadyEnrolled, dev.Serial)
		}
	} else if !errors.Is(err, state.ErrNotEnrolled) {
		return nil, nil, err
	}
	if o.Install.Floor == nil {
		o.Install.Floor = st.ClockFloor(time.Time{}, nil)
	}
	unlock, err := st.Lock()
	if err != nil {
		return nil, nil, err
	}
	var (
		key    crypto.Signer
		tpmKey *tpmkey.Key
	)
	switch o.Key {
	case KeyFile, "":
		key, err = deviceKey(st)
	case KeyTPM:
		tpmKey, err = deviceTPMKey(st, o.TPM)
		key = tpmKey
	default:
		err = fmt.Errorf("key %q: want %s or %s", o.Key, KeyFile, KeyTPM)
	}
	unlock()
	if err != nil {
		return nil, nil, err
	}
	if tpmKey != nil {
		defer func() { _ = tpmKey.Close() }()
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	hc := o.Client
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLSConfig(nil, roots,
			pki.ClientOptions{ServerName: u.Hostname(), ServerRoles: []pki.Role{pki.RoleProxy}, Floor: o.Install.Floor, Now: o.Install.Now})}}
	}
	req := enrollapi.EnrollRequest{Board: o.ID.Board, HardwareID: o.ID.Canonical}
	var der []byte
	if tpmKey != nil {
		der, req.Attestation, err = attest(ctx, hc, o, tpmKey)
	} else {
		der, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	}
	if err != nil {
		return nil, nil, err
	}
	req.CSR = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	body, err := json.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	var ans enrollapi.EnrollResponse
	if err := post(ctx, hc, o.ProxyURL, enrollapi.RouteEnroll.Path, body, &ans); err != nil {
		return nil, nil, err
	}
	serial := o.ID.Serial()
	chain, err := checkAnswer(&ans, roots, serial, key.Public(), o.Install)
	if err != nil {
		return nil, nil, err
	}
	bundle, err := base64.StdEncoding.Strict().DecodeString(ans.Bundle)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: bundle: %w", ErrBadAnswer, err)
	}
	// The certificate first (the key is already there), then the first
	// bundle, and device.json last: its presence means enrolled.
	var certPEM bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if err := locked(st, func() error {
		if err := st.WriteFile(state.CertFile, certPEM.Bytes(), 0o644); err != nil {
			return err
		}
		return st.WriteFile(state.RootFile, o.RootPEM, 0o644)
	}); err != nil {
		return nil, nil, err
	}
	inst := o.Install
	inst.Roots, inst.Serial = roots, serial
	res, err := install.Install(st, bytes.NewReader(bundle), inst)
	if err != nil {
		return nil, nil, fmt.Errorf("first bundle: %w", err)
	}
	dev := &state.Device{Serial: serial, Board: o.ID.Board, HardwareID: o.ID.Canonical, CoreURL: ans.CoreURL, CAURL: ans.CAURL,
		MQTTURL: ans.MQTTURL, MQTTTopic: ans.MQTTTopic, EnrolledAt: time.Now().UTC().Truncate(time.Second)}
	if err := locked(st, func() error { return st.SetDevice(dev) }); err != nil {
		return nil, nil, err
	}
	return dev, res, nil
}

// deviceTPMKey returns the device's key in the TPM: the one key.tpm
// holds, or a new one made in the TPM. A software key already there is
// not replaced (its certificate may be out there): enrolling it in the TPM
// needs a fresh state directory.
func deviceTPMKey(st *state.Dir, tpmPath string) (*tpmkey.Key, error) {
	data, err := st.TPMKey()
	if err != nil {
		return nil, err
	}
	if data != nil {
		k, err := tpmkey.OpenKey(data, tpmPath)
		if err != nil {
			return nil, fmt.Errorf("device key %s: %w", st.File(state.TPMKeyFile), err)
		}
		return k, nil
	}
	if _, err := os.Stat(st.File(state.KeyFile)); err == nil {
		return nil, fmt.Errorf("%s holds a software key; enrolling with the key in the TPM needs a fresh state directory", st.Path)
	}
	tpm, err := tpmkey.Open(tpmPath)
	if err != nil {
		return nil, err
	}
	blob, err := tpm.Create()
	if err == nil {
		err = st.WriteFile(state.TPMKeyFile, blob.Marshal(), 0o600)
	}
	_ = tpm.Close()
	if err != nil {
		return nil, err
	}
	return tpmkey.OpenKey(blob.Marshal(), tpmPath)
}

// attest makes the CSR of the key in the TPM and proves the key resident
// there (enrollapi's challenge): the endorsement key's certificate and a
// fresh attestation key to the proxy, its credential opened, and the
// device key certified by the attestation key over the challenge's nonce,
// the CSR and the hardware ID.
func attest(ctx context.Context, hc *http.Client, o Options, key *tpmkey.Key) ([]byte, *enrollapi.Attestation, error) {
	tpm := key.TPM()
	ek, err := tpm.EKCertificate()
	if err != nil {
		return nil, nil, err
	}
	ak, err := tpm.NewAK()
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = ak.Close() }()
	body, err := json.Marshal(enrollapi.ChallengeRequest{Board: o.ID.Board, HardwareID: o.ID.Canonical, EKCert: ek, AKPublic: ak.Public()})
	if err != nil {
		return nil, nil, err
	}
	var ch enrollapi.ChallengeResponse
	if err := post(ctx, hc, o.ProxyURL, enrollapi.RouteEnrollChallenge.Path, body, &ch); err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, err
	}
	att, err := ak.Answer(&ch, key, der, o.ID.Canonical)
	switch {
	case errors.Is(err, tpmkey.ErrCredential):
		return nil, nil, fmt.Errorf("%w: %w", ErrBadAnswer, err)
	case err != nil:
		return nil, nil, err
	}
	return der, att, nil
}

// deviceKey returns the device's key: the one it has (an unfinished
// enrollment, whose retry the proxy's deny policy lets finish, or a
// re-enrollment with --force, which same-key-only allows), or a new P-256
// key written 0600. A key is never replaced: the certificate beside it
// would no longer match.
func deviceKey(st *state.Dir) (crypto.Signer, error) {
	data, err := os.ReadFile(st.File(state.KeyFile))
	switch {
	case err == nil:
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("%s: not PEM", st.File(state.KeyFile))
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", st.File(state.KeyFile), err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: a %T", st.File(state.KeyFile), k)
		}
		return s, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := st.WriteFile(state.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return k, nil
}

// refusal reads a proxy's error body. Proxies before the one error shape
// of both services sent the text as "reason"; this release reads both, the
// next reads only "message".
func refusal(data []byte) (enrollapi.Error, bool) {
	var e struct {
		enrollapi.Error
		Reason string `json:"reason"`
	}
	if json.Unmarshal(data, &e) != nil || e.Code == "" {
		return enrollapi.Error{}, false
	}
	if e.Message == "" {
		e.Message = e.Reason
	}
	return e.Error, true
}

// post sends body to the proxy's path and decodes its answer into out.
func post(ctx context.Context, hc *http.Client, proxy, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, proxy+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("enroll at %s: %w", proxy, err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("enroll at %s: %w", proxy, err)
	}
	if len(data) > maxAnswer {
		return fmt.Errorf("%w: over %d bytes", ErrBadAnswer, maxAnswer)
	}
	if resp.StatusCode != http.StatusOK {
		if e, ok := refusal(data); ok {
			if ra := resp.Header.Get("Retry-After"); ra != "" {
				e.Message += " (retry after " + ra + " s)"
			}
			return fmt.Errorf("%w: HTTP %d %s: %s", ErrRefused, resp.StatusCode, e.Code, e.Message)
		}
		return fmt.Errorf("%w: HTTP %d", ErrRefused, resp.StatusCode)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("%w: %w", ErrBadAnswer, err)
	}
	return nil
}

// checkAnswer accepts only a certificate chain from the pinned root, for
// this device's serial (computed here by the same rule), for this key.
func checkAnswer(ans *enrollapi.EnrollResponse, roots *pki.TrustBundle, serial string, pub crypto.PublicKey, o install.Options) ([]*x509.Certificate, error) {
	if ans.Serial != serial {
		return nil, fmt.Errorf("%w: serial %q, the rule gives %s", ErrBadAnswer, ans.Serial, serial)
	}
	chain, err := pki.ParseCertificates([]byte(ans.Certificate))
	if err != nil || len(chain) == 0 {
		return nil, fmt.Errorf("%w: certificate: %w", ErrBadAnswer, err)
	}
	want, err := pki.DeviceIdentity(roots.TrustDomain(), serial)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if o.Now != nil {
		now = o.Now()
	}
	got, err := roots.Verify(chain, pki.VerifyOptions{Time: now, Floor: o.Floor, KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}})
	if err != nil {
		return nil, fmt.Errorf("%w: certificate: %w", ErrBadAnswer, err)
	}
	if got != want {
		return nil, fmt.Errorf("%w: the certificate is for %s, not %s", ErrBadAnswer, got, want)
	}
	mine, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	if theirs, err := x509.MarshalPKIXPublicKey(chain[0].PublicKey); err != nil || !bytes.Equal(mine, theirs) {
		return nil, fmt.Errorf("%w: the certificate is not for this device's key", ErrBadAnswer)
	}
	for _, u := range []struct{ name, v, scheme string }{{"coreUrl", ans.CoreURL, "https"}, {"caUrl", ans.CAURL, "https"}, {"mqttUrl", ans.MQTTURL, ""}} {
		p, err := url.Parse(u.v)
		if err != nil || p.Host == "" || (u.scheme != "" && p.Scheme != u.scheme) {
			return nil, fmt.Errorf("%w: %s %q", ErrBadAnswer, u.name, u.v)
		}
	}
	return chain, nil
}

func locked(st *state.Dir, fn func() error) error {
	unlock, err := st.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	return fn()
}
