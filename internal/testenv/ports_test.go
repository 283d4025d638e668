package testenv_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"

	"github.com/fleetprov/prov/internal/testenv"
)

func listen(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// The listeners of this very process are found, IPv4 and IPv6; a closed
// one, and a client connection, are not.
func TestListeningTCP(t *testing.T) {
	v4 := listen(t, "127.0.0.1:0")
	want := []netip.AddrPort{v4}
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		t.Cleanup(func() { _ = ln.Close() })
		want = append(want, netip.MustParseAddrPort(ln.Addr().String()))
	} else {
		t.Logf("no IPv6 loopback here: %v", err)
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := netip.MustParseAddrPort(closed.Addr().String())
	_ = closed.Close()
	conn, err := net.Dial("tcp", v4.String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	client := netip.MustParseAddrPort(conn.LocalAddr().String())

	got, err := testenv.ListeningTCP(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s is missing from %v", w, got)
		}
	}
	for _, no := range []netip.AddrPort{gone, client} {
		if slices.Contains(got, no) {
			t.Errorf("%s, not a listener of this process, is in %v", no, got)
		}
	}
}

func TestListeningTCPOfNoProcess(t *testing.T) {
	if _, err := testenv.ListeningTCP(-1); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

// A port found taken is replaced by another; any other start failure ends
// it; ports taken every time end it with ErrPortsTaken.
func TestStartOnFreePort(t *testing.T) {
	var tried []int
	port, err := testenv.StartOnFreePort("127.0.0.1", func(port int) error {
		tried = append(tried, port)
		if len(tried) < 3 {
			return fmt.Errorf("the server says: %w", syscall.EADDRINUSE)
		}
		return nil
	})
	if err != nil || len(tried) != 3 || port != tried[2] || port == 0 {
		t.Fatalf("port %d, %v after trying %v", port, err, tried)
	}

	errBroken := errors.New("bad configuration")
	tried = nil
	if _, err := testenv.StartOnFreePort("127.0.0.1", func(port int) error {
		tried = append(tried, port)
		return errBroken
	}); !errors.Is(err, errBroken) || len(tried) != 1 {
		t.Fatalf("%v after trying %v; want the start error at once", err, tried)
	}

	tried = nil
	if _, err := testenv.StartOnFreePort("127.0.0.1", func(port int) error {
		tried = append(tried, port)
		return syscall.EADDRINUSE
	}); !errors.Is(err, testenv.ErrPortsTaken) || !errors.Is(err, syscall.EADDRINUSE) || len(tried) != 5 {
		t.Fatalf("%v after trying %v; want ErrPortsTaken after 5", err, tried)
	}
}

// Nothing accepts on the port, and nothing else may listen there while
// the test runs.
func TestRefusingPort(t *testing.T) {
	port := testenv.RefusingPort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if conn, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		if conn != nil {
			_ = conn.Close()
		}
		t.Fatalf("dial %s: %v; want connection refused", addr, err)
	}
	for _, host := range []string{"127.0.0.1", "0.0.0.0"} {
		if ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", host, port)); !errors.Is(err, syscall.EADDRINUSE) {
			if ln != nil {
				_ = ln.Close()
			}
			t.Fatalf("listen on %s:%d: %v; want address in use", host, port, err)
		}
	}
}
