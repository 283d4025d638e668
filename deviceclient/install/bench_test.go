package install_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/fleetprov/prov/deviceclient/devicetest"
	"github.com/fleetprov/prov/deviceclient/install"
)

// BenchmarkInstall measures verify+install of a bundle on the device: the
// streaming verification, inspection, fsync, rename, pointer switch and
// high-water mark, for a small image and one near the limits (~1 MiB).
func BenchmarkInstall(b *testing.B) {
	f := devicetest.New(b)
	for _, size := range []struct {
		name  string
		files int
	}{{"small", 1}, {"1MiB", 16}} {
		b.Run(size.name, func(b *testing.B) {
			st := open(b, b.TempDir())
			bundles := make([][]byte, 8)
			for i := range bundles {
				rec := devicetest.Record(serial, uint64(i+1))
				for j := range size.files {
					rec.Data[fmt.Sprintf("/etc/prov/data/f%02d", j)] = strings.Repeat(string(rune('a'+j)), 60<<10)
				}
				bundles[i] = f.Bundle(b, rec)
			}
			b.SetBytes(int64(len(bundles[0])))
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if i > 0 && i%len(bundles) == 0 {
					b.StopTimer() // a new directory: generations start again
					st = open(b, b.TempDir())
					b.StartTimer()
				}
				if _, err := install.Install(st, bytes.NewReader(bundles[i%len(bundles)]), opts(f)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
