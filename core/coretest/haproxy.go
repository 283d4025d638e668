package coretest

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// HAProxyDoc is the page, relative to the repository's root, whose block
// marked file=HAProxyConf is the load balancer's configuration: HAProxy
// runs in the tests on that block, not on a copy.
const (
	HAProxyDoc  = "docs/haproxy.md"
	HAProxyConf = "prov-core.cfg"
	// HAProxyBackend is the page's backend of core replicas.
	HAProxyBackend = "prov_core_replicas"
	// HAProxyIdentity is the core identity HAProxy presents in its health
	// checks, as the page issues it (no host names).
	HAProxyIdentity = "lb"
	// HAProxyHost is the balancer's name in the tests: a host name of the
	// test deployment's core certificates.
	HAProxyHost = "localhost"
)

// haproxyTestOnly is the global section a test puts before the page's
// file, none of it about balancing: Debian's packaged haproxy.cfg has the
// real one (chroot, user, syslog, the admin socket); a test's admin socket
// is in its own directory and the log goes to the test.
const haproxyTestOnly = "global\n    stats socket %s mode 600 level admin\n    log stderr format short local0 info\n"

// Balancer is HAProxy running the page's configuration in front of core
// replicas.
type Balancer struct {
	URL    string // https://localhost:port, the name core's certificates carry
	Addr   string // 127.0.0.1:port
	socket string // the admin socket
}

// HAProxy runs Debian's /usr/sbin/haproxy in front of the core replicas at
// addrs (host:port each; as many as the page has server lines) until the
// test ends, configured as docs/haproxy.md says, and returns once its admin
// socket answers. It listens on a socket the test bound (bind fd@3): no
// port is picked. Its health checks present the deployment's core identity
// HAProxyIdentity, issued through c on first use.
func HAProxy(t testing.TB, c *catest.CA, addrs ...string) *Balancer {
	t.Helper()
	bin := testenv.Tool(t, "haproxy", "install Debian's haproxy")
	files, err := DocumentedFiles(HAProxyDocPath())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := issueCore(c, HAProxyIdentity, nil); err != nil {
		t.Fatal(err)
	}
	// HAProxy wants the certificate and its key in one file.
	var pem []byte
	for _, f := range []string{c.IdentityCert(pki.RoleCore, HAProxyIdentity), c.IdentityKey(pki.RoleCore, HAProxyIdentity)} {
		b, err := os.ReadFile(f) //nolint:gosec // the test deployment's files
		if err != nil {
			t.Fatal(err)
		}
		pem = append(pem, b...)
	}
	certFile := filepath.Join(dir, "lb.pem")
	if err := os.WriteFile(certFile, pem, 0o600); err != nil { //nolint:gosec // a test directory
		t.Fatal(err)
	}
	vals := map[string]string{"LISTEN": "fd@3", "CORE_HOST": HAProxyHost, "ROOT": c.RootCert(), "CERT": certFile}
	for i, a := range addrs {
		vals[fmt.Sprintf("CORE_%d", i+1)] = a
	}
	if err := SamePlaceholders(files[HAProxyConf], vals); err != nil {
		t.Fatalf("%s: %v", HAProxyDoc, err)
	}
	cfg, err := FillPlaceholders(files[HAProxyConf], vals)
	if err != nil {
		t.Fatalf("%s, %s: %v", HAProxyDoc, HAProxyConf, err)
	}
	conf := filepath.Join(dir, HAProxyConf)
	global := filepath.Join(dir, "global.cfg")
	socket := filepath.Join(dir, "admin.sock")
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(global, []byte(fmt.Sprintf(haproxyTestOnly, socket)), 0o600); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnFile, err := ln.(*net.TCPListener).File()
	_ = ln.Close() // HAProxy holds the duplicate
	if err != nil {
		t.Fatal(err)
	}
	// -db: in the foreground, not as a daemon; the global file first, as
	// Debian's haproxy.cfg comes before the page's file.
	cmd := exec.Command(bin, "-db", "-f", global, "-f", conf) //nolint:gosec // a test tool
	cmd.ExtraFiles = []*os.File{lnFile}                       // fd 3
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("haproxy: %v", err)
	}
	_ = lnFile.Close()
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("haproxy:\n%s", out.String())
		}
	})
	b := &Balancer{Addr: ln.Addr().String(), socket: socket}
	_, port, _ := net.SplitHostPort(b.Addr)
	b.URL = "https://" + net.JoinHostPort(HAProxyHost, port)
	if err := testenv.WaitFor(10*time.Second, func() error {
		select {
		case <-exited:
			if exitErr == nil {
				exitErr = errors.New("exited with status 0")
			}
			return testenv.Final(fmt.Errorf("haproxy: %w\n%s", exitErr, out.String()))
		default:
		}
		_, err := b.Servers()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return b
}

// HAProxyDocPath is the absolute path of HAProxyDoc in this source tree.
func HAProxyDocPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", filepath.FromSlash(HAProxyDoc))
}

// Server is a replica as HAProxy sees it (a row of `show stat`).
type Server struct {
	Status      string // UP, DOWN, or on the way: "UP 1/2", "DOWN 1/2"
	CheckStatus string // L7OK, L7STS (not 200), L4CON (refused), L6RSP (TLS) ...
	Sessions    int    // connections passed to it so far
	CheckFails  int    // failed health checks so far
}

// ErrNoServer is a server name the balancer's backend does not have.
var ErrNoServer = errors.New("no such server in the backend")

// Servers asks HAProxy's admin socket for the backend's replicas, by the
// page's server names.
func (b *Balancer) Servers() (map[string]Server, error) {
	out, err := b.Command("show stat")
	if err != nil {
		return nil, err
	}
	rows, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# "))).ReadAll()
	if err != nil || len(rows) == 0 {
		return nil, fmt.Errorf("haproxy show stat: %q: %w", out, err)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	for _, name := range []string{"pxname", "svname", "status", "check_status", "stot", "chkfail"} {
		if _, ok := col[name]; !ok {
			return nil, fmt.Errorf("haproxy show stat: no column %s in %q", name, rows[0])
		}
	}
	servers := map[string]Server{}
	for _, r := range rows[1:] {
		if len(r) != len(rows[0]) || r[col["pxname"]] != HAProxyBackend || r[col["svname"]] == "BACKEND" {
			continue
		}
		stot, _ := strconv.Atoi(r[col["stot"]])
		fails, _ := strconv.Atoi(r[col["chkfail"]])
		servers[r[col["svname"]]] = Server{Status: r[col["status"]], CheckStatus: r[col["check_status"]], Sessions: stot, CheckFails: fails}
	}
	if len(servers) == 0 {
		return nil, fmt.Errorf("haproxy show stat: no server of %s in %q", HAProxyBackend, out)
	}
	return servers, nil
}

// Server is one replica as HAProxy sees it.
func (b *Balancer) Server(name string) (Server, error) {
	servers, err := b.Servers()
	if err != nil {
		return Server{}, err
	}
	s, ok := servers[name]
	if !ok {
		return Server{}, fmt.Errorf("%w: %s", ErrNoServer, name)
	}
	return s, nil
}

// WaitStatus waits until HAProxy reports each named server with status
// ("UP" or "DOWN", settled: not on the way).
func (b *Balancer) WaitStatus(t testing.TB, status string, names ...string) {
	t.Helper()
	if err := testenv.WaitFor(60*time.Second, func() error {
		servers, err := b.Servers()
		if err != nil {
			return err
		}
		for _, n := range names {
			if s, ok := servers[n]; !ok || s.Status != status {
				return fmt.Errorf("server %s is %+v, want %s", n, s, status)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Command sends one command to HAProxy's admin socket and returns its
// answer.
func (b *Balancer) Command(cmd string) (string, error) {
	conn, err := net.DialTimeout("unix", b.socket, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", err
	}
	out, err := io.ReadAll(conn)
	return string(out), err
}

// ReplicaConfig writes the configuration of the core replica name into dir:
// Config with the replica's own core identity (issued through c on first
// use for the host names of core's certificate, the balancer's name among
// them), as docs/haproxy.md says each replica gets; extra as for Config.
func ReplicaConfig(t testing.TB, c *catest.CA, dir, name, extra string) string {
	t.Helper()
	hosts, err := coreHosts(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := issueCore(c, name, hosts); err != nil {
		t.Fatal(err)
	}
	tls := fmt.Sprintf("tls: {cert: %q, key: %q}\n", c.IdentityCert(pki.RoleCore, name), c.IdentityKey(pki.RoleCore, name))
	return Config(t, c.Deployment, dir, MergeYAML(extra, tls))
}
