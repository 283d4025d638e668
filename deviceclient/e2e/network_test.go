package e2e_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/swtpm"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// The two networks: the host's side of each veth pair, and the device's.
const (
	factoryHost, factoryDevice = "10.231.0.1", "10.231.0.2"
	fieldHost, fieldDevice     = "10.232.0.1", "10.232.0.2"
)

// TestDeviceAcrossNetworks is a device's life on real networks: the proxy
// is on a factory network only, core, step-ca and the broker on the field
// network. The CA is the real step-ca binary on prov-pki init's
// configuration; the broker is Debian's Mosquitto on docs/mosquitto.md's
// configuration; the device is the prov-device binary, run inside network
// namespaces.
func TestDeviceAcrossNetworks(t *testing.T) {
	testenv.Root(t, "network namespaces")
	sys := startAcrossNetworks(t)

	// Enrolled in the factory.
	if out, err := sys.dev(sys.factory, "enroll", "--proxy", sys.proxy.URL, "--root", sys.d.RootCert()).CombinedOutput(); err != nil {
		t.Fatalf("enroll on the factory network: %v\n%s", err, out)
	}
	s, err := state.Open(sys.state)
	if err != nil {
		t.Fatal(err)
	}
	device, err := s.Device()
	if err != nil {
		t.Fatal(err)
	}
	firstCert, err := s.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	sys.checkBoundaries(t, device.Serial)

	// An update over mTLS in the field.
	admin := sys.core.Client(t, sys.core.Admin(t))
	changeGroup(t, admin, "site=hall-1")
	if out, err := sys.dev(sys.field, "update", "--target", "").CombinedOutput(); err != nil || !strings.Contains(string(out), "installed generation 2") {
		t.Fatalf("update in the field: %v\n%s", err, out)
	}
	sys.daemonInField(t, s, admin, firstCert)

	// The renewed certificate works at core, from the field.
	if out, err := sys.dev(sys.field, "update", "--target", "").CombinedOutput(); err != nil {
		t.Fatalf("update with the renewed certificate: %v\n%s", err, out)
	}
	if out, err := exec.Command(sys.bin, "status", "--state", sys.state, "--json").Output(); err != nil || !bytes.Contains(out, []byte(`"generation": 3`)) {
		t.Fatalf("status: %v\n%s", err, out)
	}

	t.Run("TPM board", sys.tpmBoard)
}

// tpmBoard: a board with its key in its TPM (swtpm on a Unix socket, which
// network namespaces do not separate) enrolls from the factory network,
// attested, at a proxy that trusts its TPM's manufacturer and whose batch
// lists its endorsement key; then it fetches over mTLS in the field with
// the key in the TPM, and mounts its image like the others.
func (sys *acrossNetworks) tpmBoard(t *testing.T) {
	sw := swtpm.Start(t)
	ek := sw.EKHash()
	const raw = "10000000e2e00002"
	dir := t.TempDir()
	manifest := filepath.Join(dir, "line.csv")
	if err := os.WriteFile(manifest, []byte("board,hardwareId,ekSha256\nrpi4,"+raw+","+ek+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	proxy := proxytest.StartOn(t, sys.core, factoryHost+":0", sys.proxyTop+fmt.Sprintf("\nattestation: {roots: %q}", sw.ManufacturerChain),
		fmt.Sprintf("networks: [\"10.231.0.0/24\"]\nbatches:\n  - {name: tpm, manifest: %q, attestation: required}\n", manifest))
	board, stateDir := rpi4Board(t, raw), filepath.Join(dir, "state")
	dev := func(ns *netns, args ...string) {
		t.Helper()
		cmd := ns.command(append([]string{sys.bin}, append(args, "--state", stateDir, "--cpuinfo", board.cpuinfo, "--dt-root", board.dt)...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("prov-device %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	dev(sys.factory, "enroll", "--proxy", proxy.URL, "--root", sys.d.RootCert(), "--key", "tpm", "--tpm", sw.Path())
	if _, err := os.Stat(filepath.Join(stateDir, state.KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after enroll --key tpm: %v, want none", state.KeyFile, err)
	}
	s, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	leaf, err := s.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	if ka, err := pki.KeyAttestationOf(leaf); err != nil || !ka.TPM || ka.EKSHA256 != ek {
		t.Fatalf("the certificate's key attestation: %+v %v, want TPM with EK %s", ka, err, ek)
	}
	// Fetched in the field (mTLS to core with the TPM key), mounted on
	// the host (a mount inside "ip netns exec" would end with it).
	changeGroup(t, sys.core.Client(t, sys.core.Admin(t)), "site=hall-tpm")
	dev(sys.field, "update", "--target", "")
	target, runDir := filepath.Join(dir, "etc"), filepath.Join(dir, "run")
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	mnt := []string{"--target", target, "--run-dir", runDir, "--state", stateDir}
	if out, err := exec.Command(sys.bin, append([]string{"mount", "--cpuinfo", board.cpuinfo, "--dt-root", board.dt}, mnt...)...).CombinedOutput(); err != nil {
		t.Fatalf("prov-device mount: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(sys.bin, append([]string{"unmount"}, mnt...)...).Run() })
	if site, err := os.ReadFile(filepath.Join(target, "prov", "data", "site")); err != nil || string(site) != "hall-tpm\n" {
		t.Errorf("/etc/prov/data/site through the mount: %q %v", site, err)
	}
}

// acrossNetworks is the whole system on the host, a factory network and a
// field network, and one board's state directory.
type acrossNetworks struct {
	d              *deployment.Deployment
	core           *coretest.Core
	proxy          *proxytest.Proxy
	proxyTop       string // the proxy's configuration but vouching
	factory, field *netns
	curl, bin      string
	caPort         string
	corePort       string
	state          string
	board          boardFiles
}

// startAcrossNetworks starts the real step-ca binary, Mosquitto, core and
// the proxy on the host, reachable from two network namespaces: the proxy
// only from the factory one.
func startAcrossNetworks(t *testing.T) *acrossNetworks {
	t.Helper()
	ipTool := testenv.Tool(t, "ip", "apt-get install iproute2")
	curl := testenv.Tool(t, "curl", "apt-get install curl")
	stepCA := testenv.Tool(t, "step-ca", "CGO_ENABLED=0 go install github.com/smallstep/certificates/cmd/step-ca@v0.30.2")
	id := strconv.Itoa(os.Getpid() % 100000)
	sys := &acrossNetworks{curl: curl, factory: newNetns(t, ipTool, "pvf"+id, factoryHost, factoryDevice),
		field: newNetns(t, ipTool, "pvd"+id, fieldHost, fieldDevice)}

	// The PKI names the servers by the addresses the device uses. step-ca
	// binds a free port on every address; RunBinary finds out which.
	sys.d = catest.NewPKI(t, func(o *deployment.InitOptions) {
		o.CAAddress = "0.0.0.0:0"
		o.CAHosts = []string{"localhost", "127.0.0.1", fieldHost}
		o.CoreHosts = []string{"localhost", "127.0.0.1", fieldHost}
		o.Proxies = []deployment.ProxySpec{{Name: catest.Proxy, Hosts: []string{"localhost", "127.0.0.1", factoryHost}}}
	})
	ca := catest.RunBinary(t, stepCA, sys.d)
	caURL, err := url.Parse(ca.CAURL)
	if err != nil {
		t.Fatal(err)
	}
	sys.caPort = caURL.Port()
	mqttPort := coretest.Mosquitto(t, ca, "0.0.0.0")
	dir := t.TempDir()
	sys.core = coretest.RunAt(t, ca, coretest.Config(t, sys.d, dir,
		fmt.Sprintf("mqtt: {embedded: {listen: \"\"}, external: {url: \"tls://localhost:%d\"}}\n", mqttPort)), dir, "0.0.0.0:0")
	sys.corePort = sys.core.URL[strings.LastIndex(sys.core.URL, ":")+1:]
	sys.core.URL = "https://127.0.0.1:" + sys.corePort
	sys.proxyTop = fmt.Sprintf("field: {coreUrl: \"https://%s:%s\", caUrl: \"https://%s:%s\", mqttUrl: \"tls://%s:%d\"}\ncertificateLifetime: 5m",
		fieldHost, sys.corePort, fieldHost, sys.caPort, fieldHost, mqttPort)
	sys.proxy = proxytest.StartOn(t, sys.core, factoryHost+":0", sys.proxyTop, "networks: [\"10.231.0.0/24\"]\n")
	sys.bin = filepath.Join(binaries(t), "prov-device")
	sys.board = rpi4Board(t, "10000000e2e00001")
	sys.state = filepath.Join(t.TempDir(), "state")
	return sys
}

// dev is prov-device with args, run in a network namespace as the board.
func (sys *acrossNetworks) dev(ns *netns, args ...string) *exec.Cmd {
	return ns.command(append([]string{sys.bin}, append(args, "--state", sys.state, "--cpuinfo", sys.board.cpuinfo, "--dt-root", sys.board.dt)...)...)
}

// checkBoundaries: in the field the proxy is out of reach; core is there,
// but only for a certificate of this deployment.
func (sys *acrossNetworks) checkBoundaries(t *testing.T, serial string) {
	t.Helper()
	root := sys.d.RootCert()
	healthz := sys.proxy.URL + "/healthz"
	if out, err := sys.factory.command(sys.curl, "-fsS", "--max-time", "5", "--cacert", root, healthz).CombinedOutput(); err != nil {
		t.Fatalf("the proxy from the factory network: %v\n%s", err, out)
	}
	if out, err := sys.field.command(sys.curl, "-fsS", "--max-time", "5", "--cacert", root, healthz).CombinedOutput(); err == nil {
		t.Fatalf("the proxy answered on the field network:\n%s", out)
	}
	if out, err := sys.dev(sys.field, "enroll", "--force", "--proxy", sys.proxy.URL, "--root", root).CombinedOutput(); err == nil {
		t.Fatalf("enrollment from the field network worked:\n%s", out)
	}
	bundleURL := fmt.Sprintf("https://%s:%s/v1/devices/%s/bundle", fieldHost, sys.corePort, serial)
	if out, err := sys.field.command(sys.curl, "-fsS", "-o", "/dev/null", "--max-time", "5", "--cacert", root,
		"--cert", filepath.Join(sys.state, state.CertFile), "--key", filepath.Join(sys.state, state.KeyFile), bundleURL).CombinedOutput(); err != nil {
		t.Fatalf("core, with the device's certificate, from the field: %v\n%s", err, out)
	}
	if out, err := sys.field.command(sys.curl, "-fsS", "-o", "/dev/null", "--max-time", "5", "--cacert", root, bundleURL).CombinedOutput(); err == nil {
		t.Fatalf("core served a client without a certificate:\n%s", out)
	}
	foreignCert, foreignKey := foreignDevice(t, serial)
	if out, err := sys.field.command(sys.curl, "-fsS", "-o", "/dev/null", "--max-time", "5", "--cacert", root,
		"--cert", foreignCert, "--key", foreignKey, bundleURL).CombinedOutput(); err == nil {
		t.Fatalf("core served a certificate from another PKI:\n%s", out)
	}
}

// daemonInField runs the daemon in the field: a change reaches it through
// Mosquitto, it renews at the step-ca binary, and it stops on SIGTERM.
func (sys *acrossNetworks) daemonInField(t *testing.T, s *state.Dir, admin *coreapi.Client, firstCert *x509.Certificate) {
	t.Helper()
	daemon := sys.dev(sys.field, "run", "--no-mount", "--renew-at", "0.01", "--poll", "1h", "--log-level", "debug")
	log := &testenv.Buffer{}
	daemon.Stdout, daemon.Stderr = log, log
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	t.Cleanup(func() {
		_ = daemon.Process.Kill()
		if t.Failed() {
			t.Logf("prov-device run:\n%s", log.String())
		}
	})
	if err := testenv.WaitFor(30*time.Second, func() error {
		if !strings.Contains(log.String(), "mqtt subscribed") {
			return errors.New(`no "mqtt subscribed" in its log`)
		}
		return nil
	}); err != nil {
		t.Fatalf("the daemon subscribed: %v", err)
	}
	changeGroup(t, admin, "site=hall-2")
	if err := testenv.WaitFor(30*time.Second, func() error {
		hw, err := s.HighWater()
		if err != nil {
			return err
		}
		if hw.Generation != 3 {
			return fmt.Errorf("generation %d", hw.Generation)
		}
		return nil
	}); err != nil {
		t.Fatalf("generation 3 through MQTT: %v", err)
	}
	if err := testenv.WaitFor(30*time.Second, func() error {
		leaf, err := s.Leaf()
		if err != nil {
			return err
		}
		if leaf.SerialNumber.Cmp(firstCert.SerialNumber) == 0 {
			return errors.New("still the enrolled certificate")
		}
		return nil
	}); err != nil {
		t.Fatalf("the certificate renewed at the step-ca binary: %v", err)
	}
	if err := daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("prov-device run after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("prov-device run did not stop on SIGTERM")
	}
}

// netns is a network namespace joined to this one by a veth pair on its
// own /24: the host side has hostIP, the namespace devIP, and there is no
// default route, so nothing beyond that /24 is reachable from inside.
type netns struct {
	name string
	ip   string
}

func newNetns(t *testing.T, ipTool, name, hostIP, devIP string) *netns {
	t.Helper()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ipTool, args...).CombinedOutput(); err != nil { //nolint:gosec // a test
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	hostIf, devIf := name+"h", name+"d"
	t.Cleanup(func() {
		_ = exec.Command(ipTool, "netns", "del", name).Run()  //nolint:gosec // a test
		_ = exec.Command(ipTool, "link", "del", hostIf).Run() //nolint:gosec // a test
	})
	run("netns", "add", name)
	run("link", "add", hostIf, "type", "veth", "peer", "name", devIf)
	run("link", "set", devIf, "netns", name)
	run("addr", "add", hostIP+"/24", "dev", hostIf)
	run("link", "set", hostIf, "up")
	run("-n", name, "addr", "add", devIP+"/24", "dev", devIf)
	run("-n", name, "link", "set", devIf, "up")
	run("-n", name, "link", "set", "lo", "up")
	return &netns{name: name, ip: ipTool}
}

// command runs args inside the namespace (ip netns exec execs it: the
// process is the command itself, so signals reach it).
func (n *netns) command(args ...string) *exec.Cmd {
	return exec.Command(n.ip, append([]string{"netns", "exec", n.name}, args...)...) //nolint:gosec // a test
}

type boardFiles struct{ cpuinfo, dt string }

// rpi4Board is a Raspberry Pi 4's /proc/cpuinfo and devicetree.
func rpi4Board(t *testing.T, serial string) boardFiles {
	t.Helper()
	dir := t.TempDir()
	b := boardFiles{cpuinfo: filepath.Join(dir, "cpuinfo"), dt: filepath.Join(dir, "dt")}
	if err := os.MkdirAll(b.dt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.dt, "model"), []byte("Raspberry Pi 4 Model B Rev 1.4\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.cpuinfo, []byte("processor\t: 0\nHardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: "+serial+"\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// foreignDevice is a certificate for the same device identity from
// another PKI (same trust domain name, another root).
func foreignDevice(t *testing.T, serial string) (string, string) {
	t.Helper()
	other := pkitest.NewCA(t, catest.TrustDomain)
	return other.KeyPair(t, pkitest.LeafSpec{CN: serial, URIs: []string{"spiffe://" + catest.TrustDomain + "/device/" + serial}})
}

// changeGroup sets a data file for the default group: every member moves
// to a new generation.
func changeGroup(t *testing.T, admin *coreapi.Client, kv string) {
	t.Helper()
	k, v, _ := strings.Cut(kv, "=")
	g, err := admin.Group(context.Background(), "default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetGroupData(context.Background(), "default", g.Version, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/" + k: v + "\n"}}); err != nil {
		t.Fatal(err)
	}
}
