package coretest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
)

// Populate puts n Raspberry Pis (hardware IDs from first on) in group
// straight into the store of the core configured at configPath, as they
// are in service: registered by a proxy, their enrollment certificate
// recorded, and seen by core with it. It goes through the store's own
// paths (bbolt: the group committer, up to 1,000 writes at a time). A
// bbolt core must not be running; on PostgreSQL cores may. It returns the
// serials.
//
// Serials are 40 bits of a hash, so a large fleet has collisions (about a
// third of fleets of a million have one); a hardware ID whose serial is
// taken is refused by core, and is replaced here by one from the top of
// the range, as a factory would set that board aside.
func Populate(t testing.TB, configPath, group string, first, n int) []string {
	t.Helper()
	return populate(t, configPath, group, first, n, true)
}

// PopulateRegistered is Populate with devices registered only, never
// enrolled: a third of the writes, for tests that need members of a group
// and nothing of their certificates.
func PopulateRegistered(t testing.TB, configPath, group string, first, n int) []string {
	t.Helper()
	return populate(t, configPath, group, first, n, false)
}

func populate(t testing.TB, configPath, group string, first, n int, enrolled bool) []string {
	t.Helper()
	cfg, err := config.Load(configPath)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(cfg.Policy.Groups, imagespec.Rules{AllowedPrefixes: cfg.Policy.AllowedPrefixes}, cfg.Policy.MachineIDSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	// bbolt: as many writers as a commit takes (core's default batch):
	// the store grows as it does in service (larger commits leave more
	// free pages). PostgreSQL: a few connections' worth.
	writers := 1000
	var st store.Store
	if cfg.Store.Engine == config.EnginePostgres {
		writers = 16
		st, err = postgres.Open(t.Context(), cfg.Store.URL, postgres.Options{NotACore: true})
	} else {
		st, err = store.Open(cfg.Store.Path, store.Options{CacheDevices: -1})
	}
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
	var next, collisions atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				serial, err := populateOne(st, pol, group, RPi4(first+i), enrolled)
				for errors.Is(err, store.ErrCollision) {
					serial, err = populateOne(st, pol, group, RPi4(math.MaxUint32-int(collisions.Add(1))), enrolled)
				}
				if err != nil {
					errs <- fmt.Errorf("device %d: %w", i, err)
					return
				}
				serials[i] = serial
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

// populateOne registers one device and, if enrolled, records its
// certificate and sees it; the certificate values are what step-ca would
// have issued.
func populateOne(st store.Store, pol *policy.Policy, group, raw string, enrolled bool) (string, error) {
	id, err := hwid.Parse("rpi4", raw)
	if err != nil {
		return "", err
	}
	imm, err := pol.Immutable(group, id.Serial(), id.Board)
	if err != nil {
		return "", err
	}
	v, _, err := st.Register(store.Registration{ID: id, Group: group, Immutable: imm, Actor: "spiffe://fleet.test/proxy/bench"})
	if err != nil {
		return "", err
	}
	if !enrolled {
		return v.Serial, nil
	}
	sum := sha256.Sum256([]byte(raw))
	certSerial := new(big.Int).SetBytes(sum[:16]).String()
	now := time.Now().UTC().Truncate(time.Second)
	if _, err := st.RecordIssued(v.Serial, store.Issued{Serial: certSerial, KeySHA256: hex.EncodeToString(sum[:]),
		NotBefore: now, NotAfter: now.Add(24 * time.Hour), IssuedBy: "spiffe://fleet.test/proxy/bench"}); err != nil {
		return "", err
	}
	fp := sha256.Sum256(sum[:])
	if err := st.SeenCertificate(v.Serial, store.Certificate{Fingerprint: hex.EncodeToString(fp[:]), Serial: certSerial, NotAfter: now.Add(24 * time.Hour)}); err != nil {
		return "", err
	}
	return v.Serial, nil
}
