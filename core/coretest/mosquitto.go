package coretest

import (
	"bufio"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
)

// MosquittoDoc is the page, relative to the repository's root, that holds
// the external broker's configuration: Mosquitto runs in the tests on the
// blocks it marks file=MosquittoConf and file=MosquittoACL, not on a copy.
const (
	MosquittoDoc  = "docs/mosquitto.md"
	MosquittoConf = "prov.conf"
	MosquittoACL  = "prov.acl"
)

// BrokerName is the name of the broker's own (core role) identity, as the
// page issues it.
const BrokerName = "broker"

// mosquittoTestOnly are the lines a test puts before the page's
// configuration, none of them about who may do what: as root, Mosquitto
// would drop to its own user and lose the keys in their 0700 test
// directories; its log goes to the test.
const mosquittoTestOnly = "user root\nlog_dest stderr\n"

// Mosquitto runs Debian's mosquitto as core's external broker until the
// test ends, configured as docs/mosquitto.md says, on host (an address to
// listen on) and a free port, which it returns. Its server certificate is
// the deployment's broker identity (issued through c on first use, for the
// host names of core's certificate); clients need certificates from the
// deployment's root, and core publishes as DefaultCoreName.
//
// Mosquitto cannot bind port 0 and report the port (its "listener 0" is a
// Unix socket), so this is the one server the tests start on a picked
// port: testenv.StartOnFreePort tries another port when Mosquitto says the
// one it got was taken meanwhile.
func Mosquitto(t testing.TB, c *catest.CA, host string) int {
	t.Helper()
	return MosquittoFor(t, c, host, deployment.DefaultCoreName)
}

// MosquittoFor is Mosquitto for several publishing cores (replicas, each
// with its own identity): the ACL holds the page's `user core/${CORE}`
// block once per name, as the page says to add one per core.
func MosquittoFor(t testing.TB, c *catest.CA, host string, cores ...string) int {
	t.Helper()
	return mosquitto(t, c, host, "", cores)
}

// MosquittoObserved is MosquittoFor with a test's observer: the core
// identity observer (issued here, with no host names) may read every
// device's topic, a line the page does not have. Its files are
// c.IdentityCert/IdentityKey(pki.RoleCore, observer).
func MosquittoObserved(t testing.TB, c *catest.CA, host, observer string, cores ...string) int {
	t.Helper()
	if err := issueCore(c, observer, nil); err != nil {
		t.Fatal(err)
	}
	return mosquitto(t, c, host, observer, cores)
}

func mosquitto(t testing.TB, c *catest.CA, host, observer string, cores []string) int {
	t.Helper()
	bin := testenv.Tool(t, "mosquitto", "install Debian's mosquitto")
	files, err := DocumentedFiles(MosquittoDocPath())
	if err != nil {
		t.Fatal(err)
	}
	dir := brokerDir(t, c)
	vals := map[string]string{"PORT": "", "ADDRESS": host, "DIR": dir, "CORE": cores[0]}
	if err := SamePlaceholders(files[MosquittoConf]+files[MosquittoACL], vals); err != nil {
		t.Fatalf("%s: %v", MosquittoDoc, err)
	}
	acl, err := FillPlaceholders(files[MosquittoACL], vals)
	if err != nil {
		t.Fatalf("%s, %s: %v", MosquittoDoc, MosquittoACL, err)
	}
	for _, name := range cores[1:] {
		block, err := publisherBlock(files[MosquittoACL], name)
		if err != nil {
			t.Fatalf("%s, %s: %v", MosquittoDoc, MosquittoACL, err)
		}
		acl += "\n" + block
	}
	if observer != "" {
		acl += "\n# Test only: an observer of every notification.\nuser core/" + observer + "\ntopic read " + coreapi.TopicPrefix + "+\n"
	}
	if err := os.WriteFile(filepath.Join(dir, MosquittoACL), []byte(acl), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	port, err := testenv.StartOnFreePort(host, func(port int) error {
		vals["PORT"] = fmt.Sprint(port)
		cfg, err := FillPlaceholders(files[MosquittoConf], vals)
		if err != nil {
			return err
		}
		if err := os.WriteFile(conf, []byte(mosquittoTestOnly+cfg), 0o600); err != nil {
			return err
		}
		return startMosquitto(t, bin, conf, port)
	})
	if err != nil {
		t.Fatalf("mosquitto: %v", err)
	}
	return port
}

// publisherBlock is the ACL's `user core/${CORE}` block (to the next blank
// line) for the core identity name.
func publisherBlock(acl, name string) (string, error) {
	start := strings.Index(acl, "user core/${CORE}\n")
	if start < 0 {
		return "", fmt.Errorf("%w: no line user core/${CORE}", ErrPlaceholder)
	}
	block, _, _ := strings.Cut(acl[start:], "\n\n")
	return FillPlaceholders(block+"\n", map[string]string{"CORE": name})
}

// MosquittoDocPath is the absolute path of MosquittoDoc in this source tree.
func MosquittoDocPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", filepath.FromSlash(MosquittoDoc))
}

// brokerDir is a new directory holding what the page hands the broker:
// the broker identity's cert.pem, key.pem and root_ca.crt.
func brokerDir(t testing.TB, c *catest.CA) string {
	t.Helper()
	if err := issueBroker(c); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range []string{c.IdentityCert(pki.RoleCore, BrokerName), c.IdentityKey(pki.RoleCore, BrokerName), c.IdentityRoot(pki.RoleCore, BrokerName)} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o600); err != nil { //nolint:gosec // a test directory, names of our own
			t.Fatal(err)
		}
	}
	WriteCRL(t, c, dir)
	return dir
}

// WriteCRL writes the CA's current CRL, as PEM, to dir/crl.pem, where the
// documented configuration's crlfile reads it (Mosquitto reads it again on
// SIGHUP).
func WriteCRL(t testing.TB, c *catest.CA, dir string) {
	t.Helper()
	crl := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: c.CRL(t).Raw})
	if err := os.WriteFile(filepath.Join(dir, "crl.pem"), crl, 0o600); err != nil { //nolint:gosec // a test directory
		t.Fatal(err)
	}
}

// issued are the identities (by deployment directory and name) that this
// test binary has issued.
var issued struct {
	sync.Mutex
	names map[string]bool
}

// issueBroker issues the deployment's broker identity once, as
// `prov-pki issue --role core --name broker --host ...` does, for the host
// names of core's certificate (the names clients use in the tests).
func issueBroker(c *catest.CA) error {
	hosts, err := coreHosts(c)
	if err != nil {
		return fmt.Errorf("broker identity: %w", err)
	}
	return issueCore(c, BrokerName, hosts)
}

// coreHosts are the host names of core's certificate.
func coreHosts(c *catest.CA) ([]string, error) {
	core, err := pki.LoadKeyPair(c.IdentityCert(pki.RoleCore, deployment.DefaultCoreName), c.IdentityKey(pki.RoleCore, deployment.DefaultCoreName))
	if err != nil {
		return nil, err
	}
	leaf := core.Certificate().Leaf
	hosts := slices.Clone(leaf.DNSNames)
	for _, ip := range leaf.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	return hosts, nil
}

// issueCore issues the core identity name for hosts once per deployment, as
// `prov-pki issue --role core --name NAME [--host HOST]...` does.
func issueCore(c *catest.CA, name string, hosts []string) error {
	issued.Lock()
	defer issued.Unlock()
	key := c.Dir + "\x00" + name
	if issued.names[key] {
		return nil
	}
	admin, err := c.AdminProvisioner(catest.Password)
	if err != nil {
		return fmt.Errorf("core identity %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.IssueIdentity(ctx, c.Client, admin, deployment.IdentityRequest{Role: pki.RoleCore, Name: name, Hosts: hosts, Replace: true}, time.Now()); err != nil {
		return fmt.Errorf("core identity %s: %w", name, err)
	}
	if issued.names == nil {
		issued.names = map[string]bool{}
	}
	issued.names[key] = true
	return nil
}

// DocumentedFiles returns the fenced code blocks of a Markdown file whose
// info string names a file ("```conf file=prov.conf"), by that name. A name
// given twice, or a block left open, is an error.
func DocumentedFiles(path string) (map[string]string, error) {
	data, err := os.ReadFile(path) //nolint:gosec // a document of this repository
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	var name string
	var body strings.Builder
	in := false
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		fence := strings.HasPrefix(line, "```")
		switch {
		case fence && !in:
			in, name = true, ""
			for _, f := range strings.Fields(line[3:]) {
				if v, ok := strings.CutPrefix(f, "file="); ok {
					name = v
				}
			}
			if _, dup := files[name]; dup && name != "" {
				return nil, fmt.Errorf("%s:%d: a second block for %s", path, n, name)
			}
			body.Reset()
		case fence:
			in = false
			if name != "" {
				files[name] = body.String()
			}
		case in:
			body.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if in {
		return nil, fmt.Errorf("%s: a code block is not closed", path)
	}
	return files, nil
}

var placeholder = regexp.MustCompile(`\$\{([A-Za-z0-9_]*)\}`)

// ErrPlaceholder is a placeholder without a value, or a value without a
// placeholder: the page and the code that fills it in disagree.
var ErrPlaceholder = errors.New("placeholders and values disagree")

// SamePlaceholders checks that the placeholders ${NAME} of s are exactly
// the keys of vals, so that a page and the code that fills it in cannot
// drift apart unnoticed. An empty s is an error too.
func SamePlaceholders(s string, vals map[string]string) error {
	if strings.TrimSpace(s) == "" {
		return fmt.Errorf("%w: nothing to fill in", ErrPlaceholder)
	}
	used := map[string]bool{}
	for _, m := range placeholder.FindAllStringSubmatch(s, -1) {
		if _, ok := vals[m[1]]; !ok {
			return fmt.Errorf("%w: no value for ${%s}", ErrPlaceholder, m[1])
		}
		used[m[1]] = true
	}
	for k := range vals {
		if !used[k] {
			return fmt.Errorf("%w: no ${%s} to fill in", ErrPlaceholder, k)
		}
	}
	return nil
}

// FillPlaceholders replaces each ${NAME} in s by vals[NAME]; a placeholder
// without a value is an error.
func FillPlaceholders(s string, vals map[string]string) (string, error) {
	var missing []string
	out := placeholder.ReplaceAllStringFunc(s, func(m string) string {
		v, ok := vals[m[2:len(m)-1]]
		if !ok {
			missing = append(missing, m)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("%w: no value for %s", ErrPlaceholder, strings.Join(missing, ", "))
	}
	return out, nil
}

// startMosquitto runs mosquitto on conf until the test ends and returns
// once it listens on port. If it exits because the port is taken, the
// error wraps syscall.EADDRINUSE: it logs the strerror of the bind and
// exits, so its output names that errno for certain.
func startMosquitto(t testing.TB, bin, conf string, port int) error {
	t.Helper()
	cmd := exec.Command(bin, "-c", conf) //nolint:gosec // a test tool
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	err := testenv.WaitFor(10*time.Second, func() error {
		select {
		case <-exited:
			if strings.Contains(strings.ToLower(out.String()), syscall.EADDRINUSE.Error()) {
				return testenv.Final(fmt.Errorf("port %d: %w", port, syscall.EADDRINUSE))
			}
			if exitErr == nil {
				return testenv.Final(errors.New("exited with status 0"))
			}
			return testenv.Final(fmt.Errorf("exited: %w", exitErr))
		default:
		}
		addrs, err := testenv.ListeningTCP(cmd.Process.Pid)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if int(a.Port()) == port {
				return nil
			}
		}
		return fmt.Errorf("mosquitto (pid %d) does not listen on port %d yet", cmd.Process.Pid, port)
	})
	if errors.Is(err, syscall.EADDRINUSE) {
		return err // it has exited
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("mosquitto:\n%s", out.String())
		}
	})
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out.String())
	}
	return nil
}
