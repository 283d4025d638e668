package coretest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/hwid"
	"github.com/fleetprov/prov/core/imagespec"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/store"
)

// Populate registers n Raspberry Pis (hardware IDs from first on) in group
// straight into the store of the core configured at configPath, through
// the store's own registration path (the group committer, up to 1,000 at a time),
// as a proxy would register them. Core must not be running. It returns the
// serials.
func Populate(t testing.TB, configPath, group string, first, n int) []string {
	t.Helper()
	cfg, err := config.Load(configPath)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(cfg.Policy.Groups, imagespec.Rules{AllowedPrefixes: cfg.Policy.AllowedPrefixes}, cfg.Policy.MachineIDSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(cfg.Store.Path, store.Options{CacheDevices: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	for name, data := range pol.Groups() {
		if _, _, err := st.EnsureGroup(name, data, "config"); err != nil {
			t.Fatal(err)
		}
	}
	serials := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1024)
	for range 1024 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				id, err := hwid.Parse("rpi4", RPi4(first+i))
				if err != nil {
					errs <- err
					return
				}
				imm, err := pol.Immutable(group, id.Serial(), id.Board)
				if err != nil {
					errs <- err
					return
				}
				v, _, err := st.Register(store.Registration{ID: id, Group: group, Immutable: imm, Actor: "spiffe://fleet.test/proxy/bench"})
				if err != nil {
					errs <- fmt.Errorf("register %d: %w", i, err)
					return
				}
				serials[i] = v.Serial
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return serials
}
