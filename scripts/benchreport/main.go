// Command benchreport is `make bench`: it runs every hot path's benchmark
// beside its baseline, in one run each (absolute times drift on shared
// machines; ratios measured side by side do not), prints one table and
// writes BENCHMARKS.md with the machine, the date and the commands.
//
//	go run ./scripts/benchreport [-quick] [-enroll N] [-reprovision N] [-store N] [-out FILE]
//
// -quick runs the benchmarks at their -short sizes (2,000 devices for the
// re-provision, 5,000 in the store) and fewer iterations: a minute or two.
// -reprovision and -store make those fleets larger than the issue's
// 100,000 and 1,000,000.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// run is one `go test -bench` invocation.
type run struct {
	pkg, bench, benchtime string
	args                  []string // after -args: the benchmark's own flags
}

// result is a benchmark line's metrics by unit (ns/op, ops/s, ...).
type result map[string]float64

func main() {
	quick := flag.Bool("quick", false, "small sizes and few iterations (about a minute)")
	enrollN := flag.Int("enroll", 1500, "enrollments per concurrency level")
	out := flag.String("out", "BENCHMARKS.md", "the report to write")
	reprovision := flag.Int("reprovision", 100000, "devices in the re-provisioned group")
	storeN := flag.Int("store", 1000000, "devices in the store")
	flag.Parse()
	for name, n := range map[string]int{"enroll": *enrollN, "reprovision": *reprovision, "store": *storeN} {
		if n < 1 {
			fmt.Fprintf(os.Stderr, "bench: -%s %d: want at least 1\n", name, n)
			os.Exit(2)
		}
	}
	if *quick {
		*enrollN = 200
	}
	runs := []run{
		{"./core/imagebuild/", "BenchmarkImage", "2s", nil},
		{"./core/service/", "BenchmarkFetch", "3000x", nil},
		{"./proxy/service/", "BenchmarkEnroll", fmt.Sprintf("%dx", *enrollN), nil},
		{"./core/service/", "BenchmarkReprovision", "1x", []string{fmt.Sprintf("-reprovision-devices=%d", *reprovision)}},
		{"./core/service/", "BenchmarkStore", "3x", []string{fmt.Sprintf("-store-devices=%d", *storeN)}},
		{"./deviceclient/cmd/prov-device/", "BenchmarkFootprint", "3x", nil},
		{"./deviceclient/install/", "BenchmarkInstall", "200x", nil},
		{"./core/service/", "BenchmarkReplicas", "3000x", nil},
		{"./core/service/", "BenchmarkReplicaGroupChange", "1x", []string{fmt.Sprintf("-reprovision-devices=%d", *reprovision)}},
		{"./core/store/", "BenchmarkEngines", "2000x", nil},
		// A year of renewals, simulated: ~2 minutes for 100 devices.
		{"./core/store/", "BenchmarkAuditRetention", "1x", []string{"-retention-devices=100"}},
	}
	if *quick {
		runs[0].benchtime, runs[1].benchtime, runs[6].benchtime, runs[7].benchtime, runs[9].benchtime = "300ms", "500x", "20x", "300x", "300x"
	}
	results := map[string]result{}
	var commands, raw []string
	started := time.Now()
	for _, r := range runs {
		args := []string{"test", "-run", "^$", "-bench", "^" + r.bench + "$", "-benchtime", r.benchtime, "-timeout", "30m"}
		if *quick {
			args = append(args, "-short")
		}
		args = append(args, r.pkg)
		if len(r.args) > 0 && !*quick {
			args = append(append(args, "-args"), r.args...)
		}
		cmdline := "go " + strings.Join(args, " ")
		commands = append(commands, cmdline)
		fmt.Fprintf(os.Stderr, "bench: %s\n", cmdline)
		cmd := exec.Command("go", args...) //nolint:gosec // our own fixed list of go test invocations
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "%s\nbench: %s: %v\n", lastLines(buf.String(), 40), r.bench, err)
			os.Exit(1)
		}
		for name, res := range parse(&buf) {
			results[name] = res
			raw = append(raw, name+" "+format(res))
		}
	}
	rows, err := table(results)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
	var md bytes.Buffer
	fmt.Fprintf(&md, "# Benchmarks\n\n%s, %s, on %s. Every row is measured side by side in one run; ",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.Version(), machine())
	fmt.Fprintf(&md, "the whole run took %s.\n\n", time.Since(started).Round(time.Second))
	md.WriteString(tableText(rows))
	if *quick {
		md.WriteString(quickNote)
	}
	fmt.Fprintf(&md, "\n## Commands\n\n```sh\n%s\n```\n\n## Raw results\n\n```\n%s\n```\n", strings.Join(commands, "\n"), strings.Join(raw, "\n"))
	fmt.Print(tableText(rows))
	if *quick {
		fmt.Print(quickNote)
	}
	if err := os.WriteFile(*out, md.Bytes(), 0o644); err != nil { //nolint:gosec // a report
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("\nwritten to %s\n", *out)
}

const quickNote = "\n-quick: fleets of 2,000 (re-provision) and 5,000 (store) devices and few iterations; " +
	"the fleet rows are not at the issue's sizes (a small store is mostly fixed overhead per device).\n"

// parse reads "BenchmarkX/sub-2  N  v unit  v unit ..." lines.
func parse(r io.Reader) map[string]result {
	out := map[string]result{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		res := result{}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				res[f[i+1]] = v
			}
		}
		out[name] = res
	}
	return out
}

func format(r result) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r)) {
		parts = append(parts, strconv.FormatFloat(r[k], 'f', -1, 64)+" "+k)
	}
	return strings.Join(parts, ", ")
}

// row is a line of the table.
type row struct {
	what, measured, baseline, ratio, goal string
	met                                   string // "yes", "no", "n/a"
}

// report reads results for the table and remembers what it looked for
// and did not find: a benchmark that failed to report is an error, never a
// row of zeros.
type report struct {
	r       map[string]result
	missing []string
}

// of returns a benchmark's result, noting it (or any of units) missing.
func (p *report) of(name string, units ...string) result {
	res, ok := p.r[name]
	if !ok {
		p.missing = append(p.missing, name)
		return result{}
	}
	for _, u := range units {
		if _, ok := res[u]; !ok {
			p.missing = append(p.missing, name+" "+u)
		}
	}
	return res
}

func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// table makes the rows; it fails naming every result it needed and did not find.
func table(results map[string]result) ([]row, error) {
	p := &report{r: results}
	var rows []row
	// 1. image build+sign
	buildSign := 1e9 / p.of("BenchmarkImage/build+sign", "ns/op")["ns/op"]
	mksq := 1e9 / p.of("BenchmarkImage/mksquashfs+sign", "ns/op")["ns/op"]
	bare := 1e9 / p.of("BenchmarkImage/bare-ed25519-sign/jws-input", "ns/op")["ns/op"]
	rows = append(rows,
		row{"image build+sign vs mksquashfs+sign", fmt.Sprintf("%.0f/s", buildSign), fmt.Sprintf("%.0f/s", mksq),
			fmt.Sprintf("%.0f×", buildSign/mksq), "≥ 100×", verdict(buildSign/mksq >= 100)},
		row{"image build+sign vs bare Ed25519 signature", fmt.Sprintf("%.0f/s", buildSign), fmt.Sprintf("%.0f/s", bare),
			fmt.Sprintf("%.2f", buildSign/bare), "≥ 0.5", verdict(buildSign/bare >= 0.5)})
	// 2. fetch
	latency := []string{"ops/s", "p50-ms", "p99-ms"}
	for _, mode := range []struct{ name, goal string }{{"new-connection", "0.9"}, {"keep-alive", "0.8"}} {
		c, b := p.of("BenchmarkFetch/core/"+mode.name, latency...), p.of("BenchmarkFetch/bare/"+mode.name, latency...)
		g, _ := strconv.ParseFloat(mode.goal, 64)
		rows = append(rows, row{"fetch over mTLS, " + mode.name + " (8 clients)",
			fmt.Sprintf("%.0f/s, p50 %.2f p99 %.2f ms", c["ops/s"], c["p50-ms"], c["p99-ms"]),
			fmt.Sprintf("bare Go mTLS %.0f/s, p50 %.2f p99 %.2f ms", b["ops/s"], b["p50-ms"], b["p99-ms"]),
			fmt.Sprintf("%.2f", c["ops/s"]/b["ops/s"]), "≥ " + mode.goal, verdict(c["ops/s"]/b["ops/s"] >= g)})
	}
	// 3. enrollment
	for _, c := range []string{"1", "16", "64"} {
		e, s := p.of("BenchmarkEnroll/enroll/c="+c, append(latency, "cpu-ms/op")...), p.of("BenchmarkEnroll/stepca-sign/c="+c, append(latency, "cpu-ms/op")...)
		ratio := e["ops/s"] / s["ops/s"]
		rows = append(rows, row{"enrollment end to end, concurrency " + c,
			fmt.Sprintf("%.0f/s, p50 %.1f p99 %.1f ms, CPU %.1f ms each", e["ops/s"], e["p50-ms"], e["p99-ms"], e["cpu-ms/op"]),
			fmt.Sprintf("step-ca /1.0/sign %.0f/s, p50 %.1f p99 %.1f ms, CPU %.1f ms each", s["ops/s"], s["p50-ms"], s["p99-ms"], s["cpu-ms/op"]),
			fmt.Sprintf("%.2f", ratio), "≥ 300/s and ≥ 0.5", verdict(e["ops/s"] >= 300 && ratio >= 0.5)})
	}
	// 3b. enrollment on PostgreSQL beside bbolt, at concurrency 16
	eb, ep := p.of("BenchmarkEnroll/enroll/c=16", latency...), p.of("BenchmarkEnroll/enroll-postgres/c=16", latency...)
	rows = append(rows, row{"enrollment end to end, concurrency 16, core on PostgreSQL",
		fmt.Sprintf("%.0f/s, p50 %.1f p99 %.1f ms", ep["ops/s"], ep["p50-ms"], ep["p99-ms"]),
		fmt.Sprintf("on bbolt %.0f/s, p50 %.1f p99 %.1f ms", eb["ops/s"], eb["p50-ms"], eb["p99-ms"]),
		fmt.Sprintf("%.2f", ep["ops/s"]/eb["ops/s"]), "≥ 0.5", verdict(ep["ops/s"]/eb["ops/s"] >= 0.5)})
	// 3c. replicas: registrations and fetches, bbolt vs PostgreSQL behind 1, 2, 3
	for _, op := range []struct{ name, what string }{{"register", "registrations (64 clients)"}, {"fetch", "fetches, keep-alive (8 clients)"}} {
		bolt := p.of("BenchmarkReplicas/bbolt/1/"+op.name, latency...)
		for _, n := range []string{"1", "2", "3"} {
			pg := p.of("BenchmarkReplicas/postgres/"+n+"/"+op.name, latency...)
			goal, met := "", "n/a"
			if n == "1" {
				goal, met = "≥ 0.5", verdict(pg["ops/s"]/bolt["ops/s"] >= 0.5)
			}
			rows = append(rows, row{op.what + ", PostgreSQL behind " + n + " replica(s)",
				fmt.Sprintf("%.0f/s, p50 %.2f p99 %.2f ms", pg["ops/s"], pg["p50-ms"], pg["p99-ms"]),
				fmt.Sprintf("bbolt, 1 core: %.0f/s, p50 %.2f p99 %.2f ms", bolt["ops/s"], bolt["p50-ms"], bolt["p99-ms"]),
				fmt.Sprintf("%.2f", pg["ops/s"]/bolt["ops/s"]), goal, met})
		}
	}
	gc := p.of("BenchmarkReplicaGroupChange", "devices", "devices/s")
	rows = append(rows, row{fmt.Sprintf("group change of %.0f members across 3 replicas on PostgreSQL, to every notification acknowledged by Mosquitto", gc["devices"]),
		fmt.Sprintf("%.0f devices/s", gc["devices/s"]), "", "", "≥ 10,000/s", verdict(gc["devices/s"] >= 10000)})
	for _, op := range []string{"register", "read", "change"} {
		bo, pg := p.of("BenchmarkEngines/bbolt/"+op, "ns/op"), p.of("BenchmarkEngines/postgres/"+op, "ns/op")
		rows = append(rows, row{"store alone: " + op + " (PostgreSQL test cluster, fsync off)", fmt.Sprintf("%.0f µs", pg["ns/op"]/1e3),
			fmt.Sprintf("bbolt %.0f µs", bo["ns/op"]/1e3), fmt.Sprintf("%.2f", bo["ns/op"]/pg["ns/op"]), "", "n/a"})
	}
	ar := p.of("BenchmarkAuditRetention/bbolt", "year-file-B/device", "year-compact-B/device", "pruned-compact-B/device", "daily-file-B/device")
	rows = append(rows, row{"store per device after a year of renewals (1.5 a day), bbolt: pruned to 30 days daily",
		fmt.Sprintf("%.1f KB file", ar["daily-file-B/device"]/1e3),
		fmt.Sprintf("never pruned: %.1f KB file, %.1f KB compacted; pruned once: %.1f KB compacted", ar["year-file-B/device"]/1e3, ar["year-compact-B/device"]/1e3, ar["pruned-compact-B/device"]/1e3),
		fmt.Sprintf("%.2f", ar["daily-file-B/device"]/ar["year-file-B/device"]), "", "n/a"})
	ap := p.of("BenchmarkAuditRetention/postgres", "year-B/device", "pruned-full-B/device", "daily-B/device")
	rows = append(rows, row{"store per device after a year of renewals (1.5 a day), PostgreSQL: pruned to 30 days daily, VACUUM",
		fmt.Sprintf("%.1f KB", ap["daily-B/device"]/1e3),
		fmt.Sprintf("never pruned: %.1f KB; pruned once: %.1f KB after VACUUM FULL", ap["year-B/device"]/1e3, ap["pruned-full-B/device"]/1e3),
		fmt.Sprintf("%.2f", ap["daily-B/device"]/ap["year-B/device"]), "", "n/a"})
	// 4. re-provision
	rp := p.of("BenchmarkReprovision", "devices", "devices/s", "busy-p50-ms", "busy-p99-ms", "idle-p50-ms", "idle-p99-ms")
	rows = append(rows,
		row{fmt.Sprintf("group-wide change for %.0f devices: bundles built+signed, notifications published", rp["devices"]), fmt.Sprintf("%.0f devices/s", rp["devices/s"]), "", "", "≥ 10,000/s", verdict(rp["devices/s"] >= 10000)},
		row{"fetch latency of another device meanwhile", fmt.Sprintf("p50 %.2f p99 %.2f ms", rp["busy-p50-ms"], rp["busy-p99-ms"]),
			fmt.Sprintf("idle p50 %.2f p99 %.2f ms", rp["idle-p50-ms"], rp["idle-p99-ms"]),
			fmt.Sprintf("p50 %.2f, p99 %.2f", rp["busy-p50-ms"]/rp["idle-p50-ms"], rp["busy-p99-ms"]/rp["idle-p99-ms"]), "≤ 3× idle p99",
			verdict(rp["busy-p99-ms"] <= 3*rp["idle-p99-ms"])})
	// 5. store
	st := p.of("BenchmarkStore", "devices", "bytes/device", "lookups/s", "start-s")
	rows = append(rows,
		row{fmt.Sprintf("store of %.0f in-service devices: bytes per device", st["devices"]), fmt.Sprintf("%.0f B", st["bytes/device"]), "", "", "≤ 2 KiB", verdict(st["bytes/device"] <= 2048)},
		row{"store: lookups by serial (cache off, 2 goroutines)", fmt.Sprintf("%.0f/s", st["lookups/s"]), "", "", "", "n/a"},
		row{"core start with the full store", fmt.Sprintf("%.2f s", st["start-s"]), "", "", "≤ 2 s", verdict(st["start-s"] <= 2)})
	// 6. device
	fp := p.of("BenchmarkFootprint", "MiB-amd64", "MiB-arm64", "MiB-armv7", "peak-RSS-MiB")
	small, big := p.of("BenchmarkInstall/small", "ns/op")["ns/op"], p.of("BenchmarkInstall/1MiB", "ns/op")["ns/op"]
	rows = append(rows,
		row{"prov-device stripped binary (amd64 / arm64 / armv7)", fmt.Sprintf("%.2f / %.2f / %.2f MiB", fp["MiB-amd64"], fp["MiB-arm64"], fp["MiB-armv7"]), "", "", "≤ 12 MiB",
			verdict(max(fp["MiB-amd64"], fp["MiB-arm64"], fp["MiB-armv7"]) <= 12)},
		row{"prov-device update, peak RSS (~1 MiB image)", fmt.Sprintf("%.1f MiB", fp["peak-RSS-MiB"]), "", "", "≤ 30 MiB", verdict(fp["peak-RSS-MiB"] <= 30)},
		row{"verify+install (small / ~1 MiB image)", fmt.Sprintf("%.1f / %.1f ms", small/1e6, big/1e6), "", "", "", "n/a"})
	if len(p.missing) > 0 {
		return nil, fmt.Errorf("results missing (did a benchmark skip or change its metrics?): %s", strings.Join(p.missing, "; "))
	}
	return rows, nil
}

func tableText(rows []row) string {
	var b strings.Builder
	b.WriteString("| benchmark | measured | baseline | ratio | goal | met |\n|---|---|---|---|---|---|\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join([]string{r.what, r.measured, r.baseline, r.ratio, r.goal, r.met}, " | ") + " |\n")
	}
	return b.String()
}

// machine describes this machine: CPU model, cores, memory, kernel.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0]); len(f) >= 2 {
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				mem = fmt.Sprintf(", %.0f GiB", kb/(1<<20))
			}
		}
	}
	kernel := ""
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(data))
	}
	return fmt.Sprintf("%s, %d cores%s%s", model, runtime.NumCPU(), mem, kernel)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
