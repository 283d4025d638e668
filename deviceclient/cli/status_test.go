package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
)

// Every way the kernel's view, the record of the last mount and the
// current image can disagree is reported, and agreement is not.
func TestDisagreements(t *testing.T) {
	st, err := state.Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	img := func(name string) string { return filepath.Join(st.File(state.ImagesDir), name) }
	g2, g3 := "00000000000000000002-aa.bundle", "00000000000000000003-bb.bundle"
	rec := &mount.Record{Target: "/etc", Image: g3, Generation: 3}
	ours := func(file string, deleted bool) *mount.Observed {
		return &mount.Observed{Overlay: true, LoopDevice: "/dev/loop0", BackingFile: file, Deleted: deleted}
	}
	for _, tc := range []struct {
		name    string
		rec     *mount.Record
		k       *mount.Observed
		current string
		want    []string
	}{
		{"agree", rec, ours(img(g3), false), g3, nil},
		{"nothing recorded, nothing mounted", nil, nil, g3, nil},
		{"recorded, nothing mounted", rec, nil, g3, []string{"recorded as mounted over /etc, but the kernel shows nothing mounted"}},
		{"recorded, another mount on top", rec, &mount.Observed{Other: "tmpfs tmpfs"}, g3, []string{"another mount (tmpfs tmpfs)"}},
		{"an overlay nothing recorded", nil, ours(img(g3), false), g3, []string{"no mount recorded"}},
		{"recorded one image, the kernel maps another", rec, ours(img(g2), false), g3,
			[]string{"the kernel maps " + g2, "but the current image is " + g3}},
		{"the bundle file was deleted", rec, ours(img(g3), true), g3, []string{"was deleted"}},
		{"not from the state directory", rec, ours("/tmp/"+g3, false), g3, []string{"not from " + st.File(state.ImagesDir)}},
		{"mounted and recorded, but not current", rec, ours(img(g3), false), g2, []string{"the current image is " + g2}},
	} {
		got := strings.Join(disagreements(st, tc.rec, tc.k, tc.current), " | ")
		if (got == "") != (len(tc.want) == 0) {
			t.Errorf("%s: %q", tc.name, got)
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q does not say %q", tc.name, got, w)
			}
		}
	}
}
