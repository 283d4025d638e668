package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// coreBin is prov-core built once per test binary: each of the tests that
// run it as a process would otherwise pay for a link of its own (seconds
// each on two cores), and the source is the same for all of them.
// TestMain removes it.
var coreBin struct {
	once      sync.Once
	dir, path string
	out       []byte
	err       error
}

func buildCore(t *testing.T) string {
	t.Helper()
	coreBin.once.Do(func() {
		if coreBin.dir, coreBin.err = os.MkdirTemp("", "prov-core-"); coreBin.err != nil {
			return
		}
		coreBin.path = filepath.Join(coreBin.dir, "prov-core")
		coreBin.out, coreBin.err = exec.Command("go", "build", "-o", coreBin.path, "../cmd/prov-core").CombinedOutput()
	})
	if coreBin.err != nil {
		t.Fatalf("build prov-core: %v\n%s", coreBin.err, coreBin.out)
	}
	return coreBin.path
}

// kill -9 of a core process in the middle of a burst of registrations (a
// set delay after the first is acknowledged): the store opens clean and
// holds every registration core acknowledged.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills prov-core; skipped in -short")
	}
	bin := buildCore(t)
	c := catest.Shared(t)
	for round, after := range []time.Duration{300 * time.Millisecond, 900 * time.Millisecond, 1700 * time.Millisecond} {
		t.Run(fmt.Sprintf("kill after %s", after), func(t *testing.T) {
			dir := t.TempDir()
			cmd, core, logs := startCore(t, bin, c, coretest.Config(t, c.Deployment, dir, ""))

			proxy := core.Client(t, core.Proxy(t))
			var mu sync.Mutex
			acked := map[string]string{} // serial -> hardware ID
			var wg sync.WaitGroup
			stop := make(chan struct{})
			firstAck := make(chan struct{})
			var firstOnce sync.Once
			for w := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						hw := coretest.RPi4(round<<24 | w<<16 | i)
						cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
						d, _, err := proxy.Register(cctx, coreapi.RegisterRequest{Board: "rpi4", HardwareID: hw})
						cancel()
						if err != nil {
							return // the process is gone
						}
						mu.Lock()
						acked[d.Serial] = hw
						mu.Unlock()
						firstOnce.Do(func() { close(firstAck) })
					}
				}()
			}
			// The burst is under way once core acknowledges a registration
			// (16 TLS handshakes first: under load that alone can take
			// longer than the shortest delay).
			select {
			case <-firstAck:
			case <-time.After(30 * time.Second):
				t.Fatalf("no registration acknowledged in 30s\n%s", logs.String())
			}
			// Not a wait for anything: the kill lands at a moment chosen
			// in advance, in the middle of whatever core is doing then.
			time.Sleep(after)
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			close(stop)
			wg.Wait()

			s, err := store.Open(filepath.Join(dir, "registry.db"), store.Options{})
			if err != nil {
				t.Fatalf("the store does not open after kill -9: %v", err)
			}
			defer func() { _ = s.Close() }()
			if err := s.Check(); err != nil {
				t.Fatalf("consistency check after kill -9: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			for serial, hw := range acked {
				v, err := s.Device(serial)
				if err != nil || v.Board+"/"+v.HardwareID != "rpi4/"+hw {
					t.Fatalf("acknowledged registration %s (%s) lost after kill -9: %v", serial, hw, err)
				}
			}
			if len(acked) == 0 {
				t.Fatalf("nothing was acknowledged before the kill; the test proves nothing\n%s", logs.String())
			}
			t.Logf("%d acknowledged registrations, all present", len(acked))
		})
	}
}

// startCore runs the prov-core binary on cfg, whose API listens on port 0,
// and returns it once ready, at the address its start log line reports
// (the port it bound). The process is killed at the end of the test if it
// still runs.
func startCore(t *testing.T, bin string, c *catest.CA, cfg string) (*exec.Cmd, *coretest.Core, *testenv.Buffer) {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--config", cfg)
	logs := &testenv.Buffer{} // read while core still writes
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	core := &coretest.Core{CA: c}
	var hc *http.Client
	err := testenv.WaitFor(30*time.Second, func() error {
		if core.URL == "" {
			api, err := servingAt(logs.String())
			if err != nil {
				return err
			}
			core.URL, hc = "https://"+api, core.HTTP(t, nil)
		}
		resp, err := hc.Get(core.URL + "/readyz")
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s/readyz: HTTP %d", core.URL, resp.StatusCode)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("prov-core not ready: %v\n%s", err, logs.String())
	}
	return cmd, core, logs
}

// servingAt is the API address in prov-core's start line (JSON logs).
func servingAt(logs string) (string, error) {
	for line := range strings.Lines(logs) {
		var rec struct{ Msg, API string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "prov-core serving" && rec.API != "" {
			return rec.API, nil
		}
	}
	return "", errors.New(`no "prov-core serving" log line yet`)
}

// A really full disk (a small tmpfs): registration answers 503 and writes
// nothing; once there is space again, it works.
func TestFullDisk(t *testing.T) {
	testenv.Root(t, "mounts a small tmpfs to fill")
	c := catest.Shared(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk")
	if err := os.Mkdir(disk, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", disk).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", disk).Run() })

	cfg := coretest.Config(t, c.Deployment, dir, "store: {path: \""+filepath.Join(disk, "registry.db")+"\"}\n")
	core := coretest.Run(t, c, cfg, dir)
	proxy := core.Client(t, core.Proxy(t))
	// Fill the disk, leaving a little room.
	filler := filepath.Join(disk, "filler")
	if err := fill(filler, 2<<20); err != nil {
		t.Fatal(err)
	}
	var se *coreapi.StatusError
	refused := -1
	for i := range 2000 {
		_, _, err := proxy.Register(ctx, coreapi.RegisterRequest{Board: "bbb", HardwareID: fmt.Sprintf("FULLDISK%06d", i)})
		if errors.As(err, &se) && se.Status == http.StatusServiceUnavailable {
			refused = i
			break
		}
		if err != nil {
			t.Fatalf("registration %d: %v", i, err)
		}
	}
	if refused < 0 {
		t.Fatal("the disk never filled")
	}
	if se.RetryAfter == "" {
		t.Error("503 without Retry-After")
	}
	refusedSerial := ""
	if d, err := hwSerial(fmt.Sprintf("FULLDISK%06d", refused)); err == nil {
		refusedSerial = d
	}
	if _, err := core.Client(t, core.Admin(t)).Device(ctx, refusedSerial); !errors.As(err, &se) || se.Status != http.StatusNotFound {
		t.Fatalf("the refused registration left a record: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, created, err := proxy.Register(ctx, coreapi.RegisterRequest{Board: "bbb", HardwareID: fmt.Sprintf("FULLDISK%06d", refused)}); err != nil || !created {
		t.Fatalf("after freeing space: %v %v", created, err)
	}
	t.Logf("%d registrations fit before the disk was full", refused)
}

// fill writes a file until the disk is full, then frees 64 KiB of it.
func fill(path string, limit int) error {
	f, err := os.Create(path) //nolint:gosec // test file
	if err != nil {
		return err
	}
	chunk := make([]byte, 4096)
	written := 0
	for written < limit {
		n, err := f.Write(chunk)
		written += n
		if err != nil {
			break
		}
	}
	_ = f.Sync()
	if err := f.Truncate(int64(max(0, written-64<<10))); err != nil {
		return err
	}
	return f.Close()
}

func hwSerial(raw string) (string, error) {
	id, err := hwid.Parse("bbb", raw)
	if err != nil {
		return "", err
	}
	return id.Serial(), nil
}
