package service_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// A real core whose store is a PostgreSQL database (the private cluster)
// registers, changes data with If-Match, serves bundles and, restarted on
// the same database, finds everything again: the same device for the same
// hardware ID, the changed generation and data, a byte-identical bundle.
// It writes no bbolt file, and its backup endpoint names pg_dump instead
// of copying anything.
func TestCoreOnPostgreSQL(t *testing.T) {
	url := pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate)
	c := catest.Shared(t)
	dir := t.TempDir()
	cfg := coretest.Config(t, c.Deployment, dir, fmt.Sprintf("store: {engine: postgres, url: %q, singleCore: true}\n", url))
	core := coretest.Run(t, c, cfg, dir)

	d := core.Register(t, "rpi4", coretest.RPi4(21))
	admin := core.Client(t, core.Admin(t))
	changed, err := admin.SetDeviceData(ctx, d.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/k": "v"}})
	if err != nil || changed.Generation != d.Generation+1 {
		t.Fatalf("data change: %+v %v", changed, err)
	}
	var se *coreapi.StatusError
	if _, err := admin.SetDeviceData(ctx, d.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/k": "w"}}); !errors.As(err, &se) || se.Body.Code != coreapi.CodeVersionConflict {
		t.Fatalf("a change with a stale If-Match: %v, want version_conflict", err)
	}
	bundle, etag := core.Bundle(t, d.Serial)
	if len(bundle) == 0 || etag == "" {
		t.Fatalf("bundle: %d bytes, etag %q", len(bundle), etag)
	}
	if _, err := admin.Backup(ctx, &bytes.Buffer{}); !errors.As(err, &se) || se.Status != http.StatusNotImplemented || se.Body.Code != coreapi.CodeNoBackup {
		t.Fatalf("backup on PostgreSQL: %v, want 501 no_backup", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "registry.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a core on PostgreSQL wrote a bbolt file: %v", err)
	}
	core.Stop()

	core = coretest.Run(t, c, cfg, dir)
	again := core.Register(t, "rpi4", coretest.RPi4(21))
	if again.Serial != d.Serial || again.Generation != changed.Generation {
		t.Fatalf("after restart the same hardware ID is %+v, want %s at generation %d", again, d.Serial, changed.Generation)
	}
	got, err := core.Client(t, core.Admin(t)).Device(ctx, d.Serial)
	if err != nil || got.Generation != changed.Generation || got.OwnData["/etc/prov/data/k"] != "v" {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	if b, e := core.Bundle(t, d.Serial); !bytes.Equal(b, bundle) || e != etag {
		t.Fatalf("after restart the bundle differs (%d bytes, etag %q; was %d, %q)", len(b), e, len(bundle), etag)
	}
}
