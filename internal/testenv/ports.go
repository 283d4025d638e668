package testenv

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// ListeningTCP returns the TCP addresses that process pid listens on, read
// from Linux's /proc: the sockets in the LISTEN state in
// /proc/<pid>/net/tcp and tcp6 whose inodes are among the process's open
// files in /proc/<pid>/fd. It is how a test learns the port of a server
// that binds port 0 itself and does not say which port it got (step-ca).
// Those tables list the whole network namespace, which is why the inodes
// must match: the addresses are the process's own, never a neighbour's.
func ListeningTCP(pid int) ([]netip.AddrPort, error) {
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	inodes, err := socketInodes(proc)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(filepath.Join(proc, "net", table))
		if table == "tcp6" && errors.Is(err, fs.ErrNotExist) {
			continue // a kernel without IPv6
		}
		if err != nil {
			return nil, fmt.Errorf("sockets of process %d: %w", pid, err)
		}
		addrs, err := listening(data, inodes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(proc, "net", table), err)
		}
		out = append(out, addrs...)
	}
	return out, nil
}

// socketInodes are the inodes of the sockets among proc's open files.
func socketInodes(proc string) (map[string]bool, error) {
	fds, err := os.ReadDir(filepath.Join(proc, "fd"))
	if err != nil {
		return nil, fmt.Errorf("open files of %s: %w", proc, err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(proc, "fd", fd.Name()))
		if err != nil {
			continue // closed since the directory was read
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	return inodes, nil
}

// tcpListen is TCP_LISTEN in the "st" column of /proc/net/tcp.
const tcpListen = "0A"

// listening reads a /proc/net/tcp{,6} table: the local addresses of the
// listening sockets whose inodes are in inodes.
func listening(table []byte, inodes map[string]bool) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	lines := strings.Split(string(table), "\n")
	for _, line := range lines[1:] { // after the header
		f := strings.Fields(line)
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
		if len(f) < 10 || f[3] != tcpListen || !inodes[f[9]] {
			continue
		}
		ap, err := parseProcAddr(f[1])
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}

// parseProcAddr reads the kernel's form of a socket address, "0100007F:1F90":
// the address as 32-bit words, each the hex of the word as it lies in
// memory read in host byte order, then the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(a)
	if !ok || err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("socket address %q is not ADDR:PORT in hex", s)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("socket address %q: port: %w", s, err)
	}
	addr, _ := netip.AddrFromSlice(raw) // 4 or 16 bytes
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// maxPortTries bounds StartOnFreePort: a port taken between picking and
// binding is rare; five in a row means something else is wrong.
const maxPortTries = 5

// StartOnFreePort starts a server that takes its port only from its
// configuration and cannot be told to bind port 0 and say which port it got
// (Mosquitto: its "listener 0" is a Unix socket). It is the one place in
// the tests that picks a port and hopes; everything else binds first and
// reports the bound address.
//
// It asks the kernel for a free port on host, releases it and calls start
// with it. If start's error wraps syscall.EADDRINUSE, which start must
// return only when the server said for certain that the port was taken,
// another port is tried, up to five in all. It returns the port the server
// started on.
func StartOnFreePort(host string, start func(port int) error) (int, error) {
	var err error
	for range maxPortTries {
		var port int
		if port, err = freePort(host); err != nil {
			return 0, err
		}
		err = start(port)
		if err == nil {
			return port, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return 0, err
		}
	}
	return 0, fmt.Errorf("%w (%d ports): %w", ErrPortsTaken, maxPortTries, err)
}

// freePort is a port on host that was free a moment ago (see
// StartOnFreePort for why that is not enough).
func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer func() { _ = ln.Close() }()
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		return 0, fmt.Errorf("pick a free port: listener address %v is not TCP", ln.Addr())
	}
	return addr.Port, nil
}

// RefusingPort returns a loopback TCP port that refuses connections until
// the test ends, for a client whose server is down: a socket bound to the
// port without listening holds it, so nothing else can listen there
// meanwhile (neither socket sets SO_REUSEADDR and SO_REUSEPORT both).
func RefusingPort(t testing.TB) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind a loopback port: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	in4, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		t.Fatalf("getsockname: %T is not an IPv4 address", sa)
	}
	return in4.Port
}
