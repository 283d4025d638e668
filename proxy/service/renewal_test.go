package service_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// The proxy renews its certificate at step-ca at two thirds of its life,
// several times and past the end of the first one, while devices keep
// enrolling, each over a new connection: no enrollment fails, new
// connections meet each renewed certificate, enrollments after the first
// certificate's end still reach core (with the pair in use, which is the
// renewed one), readyz stays ready without warnings and the expiry metric
// follows.
func TestRenewsItselfUnderLoad(t *testing.T) {
	d := catest.NewPKI(t)
	catest.ShortServiceCerts(t, d, 30*time.Second)
	c := catest.Run(t, d)
	first := c.Reissue(t, pki.RoleProxy, catest.Proxy, time.Minute).Leaf
	dir := t.TempDir()
	core := coretest.Run(t, c, coretest.Config(t, d, dir, ""), dir)
	p := proxytest.StartWith(t, core, "renewal: {backoff: {min: 1s, max: 5s}}", local+"rate: 1000\nburst: 1000\n")
	roots, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: pki.ClientTLSConfig(nil, roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleProxy}}), DisableKeepAlives: true}}

	var (
		mu       sync.Mutex
		enrolled int
		failed   []string
		serials  = map[string]bool{}
		lastOK   time.Time
	)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			serial, err := enrollOnce(hc, p.URL, fmt.Sprintf("10000000%08x", 0x5000+n))
			mu.Lock()
			if err != nil {
				failed = append(failed, fmt.Sprintf("enrollment %d at %s: %v", n, time.Now().UTC().Format(time.RFC3339Nano), err))
			} else {
				enrolled++
				serials[serial] = true
				lastOK = time.Now()
			}
			mu.Unlock()
		}
	}()
	halt := sync.OnceFunc(func() { close(stop); <-done })
	defer halt()

	metrics := func() (map[string]float64, error) {
		resp, err := hc.Get(p.URL + enrollapi.RouteMetrics.Path) //nolint:noctx // a test
		if err != nil {
			return nil, err
		}
		defer func() { _ = resp.Body.Close() }()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, line := range strings.Split(string(b), "\n") {
			if i := strings.LastIndexByte(line, ' '); i > 0 && !strings.HasPrefix(line, "#") {
				if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
					out[line[:i]] = v
				}
			}
		}
		return out, nil
	}
	if err := testenv.WaitFor(4*time.Minute, func() error {
		m, err := metrics()
		if err != nil {
			return err
		}
		if n := m[`prov_proxy_certificate_renewals_total{cert="tls",result="renewed"}`]; n < 3 {
			return fmt.Errorf("renewed %.0f times, want 3", n)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(serials) < 3 || !lastOK.After(first.NotAfter.Add(5*time.Second)) {
			return fmt.Errorf("enrollments met %d proxy certificates, the last at %s; the first certificate ends at %s", len(serials), lastOK.UTC(), first.NotAfter.UTC())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	halt()
	t.Logf("%d enrollments, %d proxy certificates met", enrolled, len(serials))
	if len(failed) > 0 {
		t.Fatalf("%d enrollments failed across the renewals, the first: %s", len(failed), strings.Join(failed[:min(len(failed), 5)], "; "))
	}

	resp, err := hc.Get(p.URL + enrollapi.RouteReadyz.Path) //nolint:noctx // a test
	if err != nil {
		t.Fatal(err)
	}
	var ready httpapi.Readiness
	err = json.NewDecoder(resp.Body).Decode(&ready)
	_ = resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(ready.Warnings) != 0 {
		t.Fatalf("readyz: %d %+v %v", resp.StatusCode, ready, err)
	}
	m, err := metrics()
	if err != nil {
		t.Fatal(err)
	}
	if got := m[`prov_proxy_certificate_expiry_seconds{cert="tls"}`]; got <= float64(time.Now().Unix()) {
		t.Errorf("expiry metric %v, in the past", got)
	}
}

// enrollOnce enrolls a new board with hardware ID hw over a new connection
// and returns the serial of the proxy certificate it met. It reports
// errors rather than failing the test: it runs on a goroutine of its own.
func enrollOnce(hc *http.Client, proxyURL, hw string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(enrollapi.EnrollRequest{Board: "rpi4", HardwareID: hw,
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	if err != nil {
		return "", err
	}
	resp, err := hc.Post(proxyURL+enrollapi.PathEnroll, "application/json", bytes.NewReader(body)) //nolint:noctx // a test
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, b)
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return "", errors.New("no proxy certificate")
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.String(), nil
}
