package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/proxy/proxytest"
)

func TestMain(m *testing.M) { os.Exit(catest.Main(m)) }

// BenchmarkFootprint reports what the device pays: the stripped binary's
// size for each board's platform, and the peak RSS of `prov-device
// update` installing a new generation from a real core (b.N updates, each
// in its own process).
func BenchmarkFootprint(b *testing.B) {
	dir := b.TempDir()
	sizes := map[string]float64{}
	for _, target := range []struct{ name, goarch, goarm string }{{"amd64", "amd64", ""}, {"arm64", "arm64", ""}, {"armv7", "arm", "7"}} {
		bin := filepath.Join(dir, "prov-device-"+target.name)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+target.goarch, "GOARM="+target.goarm)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("build %s: %v\n%s", target.name, err, out)
		}
		fi, err := os.Stat(bin)
		if err != nil {
			b.Fatal(err)
		}
		sizes["MiB-"+target.name] = float64(fi.Size()) / (1 << 20)
	}
	bin := filepath.Join(dir, "prov-device-amd64")
	peakRSS := rssWrapper(b, dir)
	core := coretest.Start(b, "")
	proxy := proxytest.Start(b, core, "networks: [\"127.0.0.0/8\"]\n")
	state := filepath.Join(dir, "state")
	hw := []string{"--state", state, "--board", "bbb", "--hwid", "1813BBBK0301"}
	if out, err := exec.Command(bin, append([]string{"enroll", "--proxy", proxy.URL, "--root", core.RootCert()}, hw...)...).CombinedOutput(); err != nil { //nolint:gosec // our binary
		b.Fatalf("enroll: %v\n%s", err, out)
	}
	admin := core.Client(b, core.Admin(b))
	serial := ""
	if l, err := admin.List(context.Background(), "", 10); err == nil && len(l.Devices) == 1 {
		serial = l.Devices[0].Serial
	} else {
		b.Fatalf("list: %v", err)
	}
	var peak int64
	i := 0
	for b.Loop() { // runs this function once, not again for each b.N
		i++
		b.StopTimer()
		d, err := admin.Device(context.Background(), serial)
		if err != nil {
			b.Fatal(err)
		}
		// Data files near the limits, so the image is as large as it gets.
		set := map[string]string{}
		for j := range 16 {
			set["/etc/prov/data/f"+string(rune('a'+j))] = strings.Repeat(string(rune('a'+(i+j)%26)), 60<<10)
		}
		if _, err := admin.SetDeviceData(context.Background(), serial, d.Generation, coreapi.DataChange{Set: set}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		out, rss := peakRSS(append([]string{bin, "update", "--target", ""}, hw...)...)
		if !strings.Contains(out, "installed generation") {
			b.Fatalf("update: %s", out)
		}
		peak = max(peak, rss)
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-RSS-MiB")
	for unit, v := range sizes {
		b.ReportMetric(v, unit)
	}
}

// rssWrapper builds a tiny program that runs a command and prints its
// peak RSS. The command cannot be run from this process directly: a child
// started with vfork shares this (large) process's memory until it execs,
// and the kernel carries that high-water mark across exec.
func rssWrapper(b *testing.B, dir string) func(args ...string) (string, int64) {
	b.Helper()
	src := filepath.Join(dir, "rsswrap.go")
	if err := os.WriteFile(src, []byte(`package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

func main() {
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	out, _ := cmd.CombinedOutput()
	fmt.Printf("%d\n%s", cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss, out)
}
`), 0o600); err != nil {
		b.Fatal(err)
	}
	wrap := filepath.Join(dir, "rsswrap")
	if out, err := exec.Command("go", "build", "-o", wrap, src).CombinedOutput(); err != nil {
		b.Fatalf("build the RSS wrapper: %v\n%s", err, out)
	}
	return func(args ...string) (string, int64) {
		out, err := exec.Command(wrap, args...).Output() //nolint:gosec // our binaries
		if err != nil {
			b.Fatalf("%v: %v", args, err)
		}
		first, rest, _ := strings.Cut(string(out), "\n")
		kib, err := strconv.ParseInt(first, 10, 64)
		if err != nil {
			b.Fatalf("rsswrap: %q", out)
		}
		return rest, kib << 10
	}
}
