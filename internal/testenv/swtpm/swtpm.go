// Package swtpm gives a test a software TPM 2.0 of its own, as a board
// with a TPM would have one: Debian's swtpm, manufactured by swtpm_setup
// with endorsement keys and their certificates (RSA 2048 and ECC) in the
// TPM's NV memory, signed by a local manufacturer CA made for that TPM
// alone (swtpm_localca: a root and an intermediate), then served on a
// Unix socket (what go-tpm's linuxudstpm transport opens) until the test
// ends. Each TPM has its own state directory and its own CA, so a test
// can trust one TPM's manufacturer and not another's.
//
// It skips a test where swtpm is absent (fails under PROV_REQUIRE_ALL=1;
// .ci/run installs swtpm and swtpm-tools).
package swtpm

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

// TPM is one running software TPM.
type TPM struct {
	// Socket is the Unix socket of the TPM's command channel.
	Socket string
	// ManufacturerRoots is a PEM file with the root of this TPM's
	// manufacturer CA (what a verifier trusts); ManufacturerChain adds the
	// intermediate that signed the endorsement key certificates.
	ManufacturerRoots string
	ManufacturerChain string
	// StateDir holds the TPM's persistent state (its seeds, NV memory).
	StateDir string

	t    testing.TB
	dir  string
	bin  string
	proc *exec.Cmd
	done chan error
}

// Start manufactures a TPM for t and serves it until t ends.
func Start(t testing.TB) *TPM {
	t.Helper()
	bin := testenv.Tool(t, "swtpm", "install Debian's swtpm and swtpm-tools (apt-get install -y swtpm swtpm-tools)")
	setup := testenv.Tool(t, "swtpm_setup", "install Debian's swtpm-tools (apt-get install -y swtpm-tools)")
	localca := testenv.Tool(t, "swtpm_localca", "install Debian's swtpm-tools (apt-get install -y swtpm-tools)")
	// A short directory: a Unix socket path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "swtpm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	tpm := &TPM{t: t, dir: dir, bin: bin, StateDir: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "tpm.sock"),
		ManufacturerRoots: filepath.Join(dir, "ca", "swtpm-localca-rootca-cert.pem"), ManufacturerChain: filepath.Join(dir, "ca", "chain.pem")}
	ca := filepath.Join(dir, "ca")
	for _, d := range []string{tpm.StateDir, ca} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"localca.conf":    fmt.Sprintf("statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n", ca, ca, ca, ca),
		"localca.options": "--platform-manufacturer prov-test\n--platform-version 2.1\n--platform-model swtpm\n",
		"setup.conf": fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
			localca, filepath.Join(dir, "localca.conf"), filepath.Join(dir, "localca.options")),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, setup, "--tpm2", "--tpmstate", tpm.StateDir, "--create-ek-cert", "--create-platform-cert", "--ecc",
		"--config", filepath.Join(dir, "setup.conf"), "--overwrite").CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	root, err := os.ReadFile(tpm.ManufacturerRoots)
	if err != nil {
		t.Fatalf("swtpm_localca made no root: %v", err)
	}
	issuer, err := os.ReadFile(filepath.Join(ca, "issuercert.pem"))
	if err != nil {
		t.Fatalf("swtpm_localca made no issuer: %v", err)
	}
	if err := os.WriteFile(tpm.ManufacturerChain, append(issuer, root...), 0o600); err != nil {
		t.Fatal(err)
	}
	tpm.start()
	t.Cleanup(tpm.Stop)
	return tpm
}

// Path is the TPM as prov-device names it (--tpm unix:SOCKET).
func (tpm *TPM) Path() string { return "unix:" + tpm.Socket }

// start serves the TPM's state on its socket and waits for the socket.
func (tpm *TPM) start() {
	tpm.t.Helper()
	_ = os.Remove(tpm.Socket)
	cmd := exec.Command(tpm.bin, "socket", "--tpm2", "--tpmstate", "dir="+tpm.StateDir,
		"--server", "type=unixio,path="+tpm.Socket, "--ctrl", "type=unixio,path="+filepath.Join(tpm.dir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear", "--log", "file="+filepath.Join(tpm.dir, "swtpm.log")+",level=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tpm.t.Fatalf("swtpm: %v", err)
	}
	tpm.proc, tpm.done = cmd, make(chan error, 1)
	go func() { tpm.done <- cmd.Wait() }()
	err := testenv.WaitFor(20*time.Second, func() error {
		select {
		case err := <-tpm.done:
			tpm.done <- err
			return testenv.Final(fmt.Errorf("swtpm exited: %w\n%s", err, tpm.log()))
		default:
		}
		if _, err := os.Stat(tpm.Socket); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		tpm.t.Fatalf("swtpm did not serve %s: %v", tpm.Socket, err)
	}
}

func (tpm *TPM) log() string {
	b, _ := os.ReadFile(filepath.Join(tpm.dir, "swtpm.log"))
	return strings.TrimSpace(string(b))
}

// Stop stops the TPM (its state stays: Restart serves it again, as a
// board's TPM is the same after a power cycle).
func (tpm *TPM) Stop() {
	if tpm.proc == nil {
		return
	}
	_ = tpm.proc.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-tpm.done:
		_ = err // stopped by us: its exit status says nothing
	case <-time.After(10 * time.Second):
		_ = tpm.proc.Process.Kill()
		err := <-tpm.done
		_ = err
	}
	tpm.proc = nil
}

// Restart stops the TPM and serves it again: a power cycle.
func (tpm *TPM) Restart() {
	tpm.t.Helper()
	tpm.Stop()
	tpm.start()
}

// EKCertIndexRSA is the NV index of the RSA 2048 endorsement key's
// certificate (TCG EK Credential Profile; enrollapi.EKCertIndexRSA).
const EKCertIndexRSA = tpm2.TPMHandle(0x01c00002)

// ReadEKCert reads the RSA endorsement key's certificate (DER) from a
// TPM's NV memory, as a board does, in chunks the TPM's NV buffer holds.
func ReadEKCert(tr transport.TPM) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: EKCertIndexRSA}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("NV index of the RSA EK certificate: %w", err)
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	var der []byte
	for off := uint16(0); off < nv.DataSize; {
		n := min(nv.DataSize-off, 1024)
		rd, err := tpm2.NVRead{AuthHandle: tpm2.AuthHandle{Handle: EKCertIndexRSA, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex: tpm2.NamedHandle{Handle: EKCertIndexRSA, Name: pub.NVName}, Size: n, Offset: off}.Execute(tr)
		if err != nil {
			return nil, fmt.Errorf("read the RSA EK certificate: %w", err)
		}
		der = append(der, rd.Data.Buffer...)
		off += n
	}
	return der, nil
}

// EKHash is the running TPM's RSA endorsement key as enrollapi.EKHash
// names it: what a factory records for the board at bring-up (a batch
// manifest's ekSha256).
func (tpm *TPM) EKHash() string {
	tpm.t.Helper()
	tr, err := linuxudstpm.Open(tpm.Socket)
	if err != nil {
		tpm.t.Fatal(err)
	}
	defer func() { _ = tr.Close() }()
	der, err := ReadEKCert(tr)
	if err != nil {
		tpm.t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tpm.t.Fatalf("the EK certificate: %v", err)
	}
	return enrollapi.EKHash(c.RawSubjectPublicKeyInfo)
}
