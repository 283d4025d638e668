package catest

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/stepca"
)

// A test PKI asks for port 0; the CA binds a port itself, and CAURL, in
// memory and in pki.json, names that port once it runs.
func TestCABindsItsOwnPort(t *testing.T) {
	d := NewPKI(t)
	if port := caPort(t, d.CAURL); port != "0" {
		t.Fatalf("before the CA runs, CAURL %s names port %s, want 0", d.CAURL, port)
	}
	cfg, err := ca.LoadConfig(d.CAConfig())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Address != "127.0.0.1:0" {
		t.Fatalf("ca.json listens on %q, want 127.0.0.1:0", cfg.Address)
	}
	c := Run(t, d)
	port := caPort(t, c.CAURL)
	if port == "0" || !strings.HasPrefix(c.CAURL, "https://localhost:") {
		t.Fatalf("a running CA at %s", c.CAURL)
	}
	onDisk, err := deployment.Open(d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if onDisk.CAURL != c.CAURL {
		t.Fatalf("pki.json names %s, the CA runs at %s", onDisk.CAURL, c.CAURL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Client.Health(ctx); err != nil {
		t.Fatal(err)
	}
}

// A server of the same deployment (core's certificate chains to the same
// root and names the same hosts) is not taken for the CA.
func TestFindCASkipsTheDeploymentsServices(t *testing.T) {
	d := NewPKI(t)
	cert, err := tls.LoadX509KeyPair(d.IdentityCert(pki.RoleCore, deployment.DefaultCoreName), d.IdentityKey(pki.RoleCore, deployment.DefaultCoreName))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = conn.Close() }()
				_ = conn.(*tls.Conn).Handshake()
			}()
		}
	}()
	roots, err := rootPool(d)
	if err != nil {
		t.Fatal(err)
	}
	core := netip.MustParseAddrPort(ln.Addr().String())
	if err := isCA(core, "localhost", roots); err == nil {
		t.Fatal("core's server passed for the CA")
	}
	if port, err := findCA(os.Getpid(), nil, "localhost", roots); err == nil {
		t.Fatalf("found a CA on port %d with none running", port)
	}
	c := Run(t, d)
	if port := caPort(t, c.CAURL); port == "0" || port == strconv.Itoa(int(core.Port())) {
		t.Fatalf("the CA at %s", c.CAURL)
	}
}

func caPort(t *testing.T, caURL string) string {
	t.Helper()
	u, err := url.Parse(caURL)
	if err != nil {
		t.Fatal(err)
	}
	_, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		t.Fatalf("CA URL %s: %v", caURL, err)
	}
	return port
}

// ShortServiceCerts and Reissue give minutes-long service certificates,
// and step-ca renews each over mTLS for the same life: core's and the
// signer's (Ed25519, codeSigning and clientAuth) alike, in this process and
// with the real binary.
func TestShortServiceCertsRenew(t *testing.T) {
	t.Run("in-process", func(t *testing.T) {
		d := NewPKI(t)
		ShortServiceCerts(t, d, 30*time.Second)
		serviceCertsRenew(t, Run(t, d))
	})
	t.Run("step-ca binary", func(t *testing.T) {
		bin := testenv.Tool(t, "step-ca", "install it with: CGO_ENABLED=0 go install github.com/smallstep/certificates/cmd/step-ca@v0.30.2")
		d := NewPKI(t)
		ShortServiceCerts(t, d, 30*time.Second)
		serviceCertsRenew(t, RunBinary(t, bin, d))
	})
}

func serviceCertsRenew(t *testing.T, c *CA) {
	d := c.Deployment
	for _, id := range []struct {
		role pki.Role
		name string
	}{{pki.RoleCore, deployment.DefaultCoreName}, {pki.RoleSigner, deployment.DefaultSignerName}} {
		out := c.Reissue(t, id.role, id.name, time.Minute)
		life := out.Leaf.NotAfter.Sub(out.Leaf.NotBefore)
		if life > 3*time.Minute {
			t.Fatalf("%s: a certificate for %s", out.Identity, life)
		}
		kp, err := pki.LoadKeyPair(out.CertFile, out.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := pki.LoadTrustBundle(d.RootCert())
		if err != nil {
			t.Fatal(err)
		}
		client, err := stepca.New(c.CAURL, bundle, stepca.WithClientCertificate(kp))
		if err != nil {
			t.Fatal(err)
		}
		chain, err := client.Renew(context.Background())
		if err != nil {
			t.Fatalf("%s: renew: %v", out.Identity, err)
		}
		if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got != life || chain[0].SerialNumber.Cmp(out.Leaf.SerialNumber) == 0 {
			t.Fatalf("%s: renewed for %s (was %s), serial %s", out.Identity, got, life, chain[0].SerialNumber)
		}
	}
}
