package imagebuild_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/imagebuild/squashfs"
	"github.com/fleetprov/prov/core/imagebuild/squashfs/sqfstest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/signedimage"
)

func record() *imagebuild.Record {
	return &imagebuild.Record{
		Serial:       "1a2b3c4d5e",
		Generation:   1,
		IssuedAt:     time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC),
		Hostname:     "dev-1a2b3c4d5e",
		MachineID:    "7f3c9a0e5d2b4c8e9a1f0b3d5c7e9a1b",
		MQTTClientID: "dev-1a2b3c4d5e",
		MQTTGroupID:  "line-a",
		Data: map[string]string{
			"/etc/prov/data/broker-url": "mqtts://broker.fleet.example:8883\n",
			"/etc/prov/data/wifi/ssid":  "factory\n",
		},
	}
}

// want is the tree a record's image must hold.
func want(t *testing.T, r *imagebuild.Record) sqfstest.Tree {
	t.Helper()
	files, err := r.Files(imagespec.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	var entries []squashfs.Entry
	for p, c := range files {
		entries = append(entries, squashfs.Entry{Path: p, Mode: imagespec.FileMode, Data: c})
	}
	return sqfstest.TreeOf(entries)
}

func TestImageContents(t *testing.T) {
	r := record()
	img, err := imagebuild.Build(r, imagespec.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	tree := want(t, r)
	for p, c := range map[string]string{
		"etc/hostname":        "dev-1a2b3c4d5e\n",
		"etc/machine-id":      "7f3c9a0e5d2b4c8e9a1f0b3d5c7e9a1b\n",
		"etc/serial-number":   "1a2b3c4d5e\n",
		"etc/mqtt-client-id":  "dev-1a2b3c4d5e\n",
		"etc/mqtt-group-id":   "line-a\n",
		"etc/prov/image.json": `{"format":1,"serial":"1a2b3c4d5e","generation":1,"issuedAt":"2026-11-01T12:00:00Z"}` + "\n",
		"etc/extension-release.d/extension-release.prov": "ID=_any\nCONFEXT_SCOPE=system\n",
		"etc/prov/data/broker-url":                       "mqtts://broker.fleet.example:8883\n",
		"etc/prov/data/wifi/ssid":                        "factory\n",
	} {
		if string(tree[p].Data) != c {
			t.Errorf("%s = %q, want %q", p, tree[p].Data, c)
		}
	}
	sqfstest.Check(t, img, tree, sqfstest.All)

	t.Run("machine-id off", func(t *testing.T) {
		r := record()
		r.MachineID = ""
		files, err := r.Files(imagespec.DefaultRules())
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := files[imagespec.MachineID]; ok {
			t.Fatal("image has a machine-id though the record has none")
		}
	})
}

// TestGoldenRecord pins the image of one record: a change is a deliberate,
// versioned change of the image format (imagespec.FormatVersion).
func TestGoldenRecord(t *testing.T) {
	img, err := imagebuild.Build(record(), imagespec.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(img)
	if got, pinned := hex.EncodeToString(sum[:]), "7a7629b649d13f9496026cf4d987a1072866e7205bbfb178723cd1f0a28f2db2"; got != pinned {
		t.Fatalf("image sha256 %s, pinned %s (format version %d)", got, pinned, imagespec.FormatVersion)
	}
}

// TestReproducibleAcrossProcesses builds the same record in another
// process: no process state (map order, addresses, time) leaks in.
func TestReproducibleAcrossProcesses(t *testing.T) {
	if os.Getenv("IMAGE_BUILD_CHILD") == "1" {
		img, err := imagebuild.Build(record(), imagespec.DefaultRules())
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Print(hex.EncodeToString(img))
		os.Exit(0)
	}
	img, err := imagebuild.Build(record(), imagespec.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReproducibleAcrossProcesses$")
		cmd.Env = append(os.Environ(), "IMAGE_BUILD_CHILD=1")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		if hex.EncodeToString(img) != strings.TrimSpace(string(out)) {
			t.Fatal("another process built other bytes for the same record")
		}
	}
}

func TestRecordRefusals(t *testing.T) {
	big := strings.Repeat("x", imagespec.MaxFileSize+1)
	many := map[string]string{}
	for i := range imagespec.MaxDataFiles + 1 {
		many[fmt.Sprintf("/etc/prov/data/f%d", i)] = "x"
	}
	total := map[string]string{}
	for i := range imagespec.MaxTotalSize/imagespec.MaxFileSize + 1 {
		total[fmt.Sprintf("/etc/prov/data/f%d", i)] = strings.Repeat("y", imagespec.MaxFileSize)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*imagebuild.Record)
		names  string // the error must name this
		err    error
	}{
		{"bad serial", func(r *imagebuild.Record) { r.Serial = "1A2B3C4D5E" }, "serial", imagebuild.ErrBadRecord},
		{"zero generation", func(r *imagebuild.Record) { r.Generation = 0 }, "generation", imagebuild.ErrBadRecord},
		{"no issue time", func(r *imagebuild.Record) { r.IssuedAt = time.Time{} }, "issuedAt", imagebuild.ErrBadRecord},
		{"hostname with a dot", func(r *imagebuild.Record) { r.Hostname = "a.b" }, "hostname", imagebuild.ErrBadRecord},
		{"hostname too long", func(r *imagebuild.Record) { r.Hostname = strings.Repeat("h", 64) }, "hostname", imagebuild.ErrBadRecord},
		{"machine-id upper case", func(r *imagebuild.Record) { r.MachineID = strings.ToUpper(r.MachineID) }, "machineId", imagebuild.ErrBadRecord},
		{"machine-id zero", func(r *imagebuild.Record) { r.MachineID = strings.Repeat("0", 32) }, "machineId", imagebuild.ErrBadRecord},
		{"mqtt client id with a space", func(r *imagebuild.Record) { r.MQTTClientID = "a b" }, "mqttClientId", imagebuild.ErrBadRecord},
		{"mqtt group id with a slash", func(r *imagebuild.Record) { r.MQTTGroupID = "a/b" }, "mqttGroupId", imagebuild.ErrBadRecord},
		{"data outside the prefix", func(r *imagebuild.Record) { r.Data = map[string]string{"/etc/shadow": "root::0:0"} }, "/etc/shadow", imagespec.ErrBadPath},
		{"data with ..", func(r *imagebuild.Record) { r.Data = map[string]string{"/etc/prov/data/../../shadow": "x"} }, "..", imagespec.ErrBadPath},
		{"data hidden", func(r *imagebuild.Record) { r.Data = map[string]string{"/etc/prov/data/.x": "x"} }, ".x", imagespec.ErrBadPath},
		{"data relative", func(r *imagebuild.Record) { r.Data = map[string]string{"etc/prov/data/x": "x"} }, "etc/prov/data/x", imagespec.ErrBadPath},
		{"data empty name", func(r *imagebuild.Record) { r.Data = map[string]string{"/etc/prov/data//x": "x"} }, "//x", imagespec.ErrBadPath},
		{"data is the prefix", func(r *imagebuild.Record) { r.Data = map[string]string{"/etc/prov/data/": "x"} }, "/etc/prov/data/", imagespec.ErrBadPath},
		{"data with a space", func(r *imagebuild.Record) { r.Data = map[string]string{"/etc/prov/data/a b": "x"} }, "a b", imagespec.ErrBadPath},
		{"data with a look-alike", func(r *imagebuild.Record) { r.Data = map[string]string{"/etc/prov/data/\u0430": "x"} }, "/etc/prov/data/", imagespec.ErrBadPath},
		{"data over a fixed file", func(r *imagebuild.Record) { r.Data = map[string]string{imagespec.Hostname: "x"} }, imagespec.Hostname, imagespec.ErrBadPath},
		{"data file over a data dir", func(r *imagebuild.Record) {
			r.Data = map[string]string{"/etc/prov/data/a": "x", "/etc/prov/data/a/b": "y"}
		}, "/etc/prov/data/a", imagebuild.ErrBadRecord},
		{"data file too large", func(r *imagebuild.Record) { r.Data = map[string]string{"/etc/prov/data/big": big} }, "/etc/prov/data/big", imagespec.ErrTooLarge},
		{"too many data files", func(r *imagebuild.Record) { r.Data = many }, "files", imagespec.ErrTooLarge},
		{"data too large in all", func(r *imagebuild.Record) { r.Data = total }, "in all", imagespec.ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := record()
			tc.mutate(r)
			_, err := imagebuild.Build(r, imagespec.DefaultRules())
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.names) {
				t.Fatalf("Build: %v; want %v naming %q", err, tc.err, tc.names)
			}
		})
	}
}

func TestRules(t *testing.T) {
	for _, p := range [][]string{nil, {"/etc/"}, {"/var/lib/x/"}, {"/etc/x"}, {"/etc/extension-release.d/"}, {"/etc/../x/"}} {
		if err := (imagespec.Rules{AllowedPrefixes: p}).Validate(); !errors.Is(err, imagespec.ErrBadPolicy) {
			t.Errorf("prefixes %v: %v", p, err)
		}
	}
	r := record()
	r.Data = map[string]string{"/etc/mosquitto/conf.d/fleet.conf": "x"}
	if _, err := imagebuild.Build(r, imagespec.DefaultRules()); err == nil {
		t.Fatal("a path outside the default prefix was built")
	}
	if _, err := imagebuild.Build(r, imagespec.Rules{AllowedPrefixes: []string{imagespec.DataDir, "/etc/mosquitto/conf.d/"}}); err != nil {
		t.Fatalf("an allowed extra prefix was refused: %v", err)
	}
}

func TestParseRecord(t *testing.T) {
	good := `{"serial":"1a2b3c4d5e","generation":2,"issuedAt":"2026-11-01T12:00:00Z","hostname":"h","mqttClientId":"c","mqttGroupId":"g","data":{"/etc/prov/data/a":"b"}}`
	r, err := imagebuild.ParseRecord([]byte(good))
	if err != nil || r.Generation != 2 || r.Data["/etc/prov/data/a"] != "b" {
		t.Fatalf("ParseRecord: %+v %v", r, err)
	}
	for _, bad := range []string{"", "{", `{"serial":"1a2b3c4d5e","hostnam":"typo"}`, good + good} {
		if _, err := imagebuild.ParseRecord([]byte(bad)); !errors.Is(err, imagebuild.ErrBadRecord) {
			t.Errorf("ParseRecord(%.30q): %v", bad, err)
		}
	}
}

// The signer that prov-pki init issues signs bundles that verify against
// the deployment's root.
func TestBundleWithTheDeploymentSigner(t *testing.T) {
	d := catest.NewPKI(t)
	s, err := signedimage.LoadSigner(d.IdentityCert(pki.RoleSigner, deployment.DefaultSignerName), d.IdentityKey(pki.RoleSigner, deployment.DefaultSignerName))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := imagebuild.BuildBundle(record(), imagespec.DefaultRules(), s)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	v, img, err := signedimage.VerifyBytes(b, signedimage.VerifyOptions{Roots: roots, Serial: "1a2b3c4d5e", MinGeneration: 1})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	// The record is older than this PKI: the statement is dated when the
	// signer's chain began (signedimage.Signer.Sign), and the image's
	// /etc/prov/image.json with it.
	chainPEM, err := os.ReadFile(d.IdentityCert(pki.RoleSigner, deployment.DefaultSignerName))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := pki.ParseCertificates(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	began := record().IssuedAt
	for _, c := range chain {
		if c.NotBefore.After(began) {
			began = c.NotBefore
		}
	}
	dated := record()
	dated.IssuedAt = began
	direct, err := imagebuild.Build(dated, imagespec.DefaultRules())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img, direct) || v.Signer.Name != deployment.DefaultSignerName || !v.IssuedAt.Equal(began) {
		t.Fatalf("verified %+v, want it dated %s", v, began)
	}
}

// TestRandomRecords is the property test over records: random immutable
// values, random data file sets below two prefixes; every image passes every
// oracle.
func TestRandomRecords(t *testing.T) {
	n := 10
	if testing.Short() {
		n = 2
	}
	rules := imagespec.Rules{AllowedPrefixes: []string{imagespec.DataDir, "/etc/app/conf/"}}
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
	for seed := range n {
		r := rand.New(rand.NewPCG(uint64(seed), 42))
		word := func(max int) string {
			b := make([]byte, 1+r.IntN(max))
			for i := range b {
				b[i] = alphabet[r.IntN(len(alphabet))]
			}
			if b[0] == '.' {
				b[0] = 'x'
			}
			return string(b)
		}
		rec := record()
		rec.Serial = fmt.Sprintf("%010x", r.Uint64N(1<<40))
		rec.Generation = 1 + r.Uint64N(1000)
		rec.Hostname = fmt.Sprintf("dev-%s", rec.Serial)
		rec.MQTTClientID, rec.MQTTGroupID = word(40), word(20)
		if r.IntN(2) == 0 {
			rec.MachineID = ""
		}
		rec.Data = map[string]string{}
		for range r.IntN(30) {
			// "d..." names directories and "f..." files, so they never clash.
			p := rules.AllowedPrefixes[r.IntN(2)] + "f" + word(12)
			if r.IntN(3) == 0 {
				p = rules.AllowedPrefixes[r.IntN(2)] + "d" + word(12) + "/f" + word(12)
			}
			data := make([]byte, r.IntN(3000))
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			rec.Data[p] = string(data)
		}
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			img, err := imagebuild.Build(rec, rules)
			if err != nil {
				t.Fatal(err)
			}
			files, err := rec.Files(rules)
			if err != nil {
				t.Fatal(err)
			}
			var entries []squashfs.Entry
			for p, c := range files {
				entries = append(entries, squashfs.Entry{Path: p, Mode: imagespec.FileMode, Data: c})
			}
			sqfstest.Check(t, img, sqfstest.TreeOf(entries), sqfstest.All)
		})
	}
}
