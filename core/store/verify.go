package store

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Verifying a copy of a registry (prov-core store migrate): the counts of
// every kind of record, what a core acts on compared whole (every group,
// kept group version and rollout, every hold and wave member by digest,
// the CA revocation queue), then a sample of devices read through each
// engine's Store methods (what a core serving from it would read: held or
// not, with the group data it is held at, and its latest report) and
// compared field by field.

// Copy is an engine that can be read whole and through the contract.
type Copy interface {
	Store
	Exporter
}

// Verification is what Verify found.
type Verification struct {
	Source, Target Counts
	// Sampled is how many devices were compared (with their audit trails,
	// reports and CA revocations); every group, kept group version,
	// rollout, hold and wave member and the whole CA revocation queue are
	// compared too.
	Sampled int
	// Mismatches name each record and field that differs; values are not
	// shown (a device's data may be a secret).
	Mismatches []string
}

// OK reports whether the copy holds what the source does.
func (v *Verification) OK() bool { return v.Source == v.Target && len(v.Mismatches) == 0 }

// maxMismatches bounds the mismatches reported: the first ones say enough.
const maxMismatches = 100

// digest is an order-free digest of a set of records: the sum of a hash
// of each. Holds and wave members are compared whole by it, since one
// missing hold serves a member data a rollout has not released to it, and
// a sample of devices could miss it.
type digest uint64

func (d *digest) add(fields ...string) {
	h := sha256.Sum256([]byte(strings.Join(fields, "\x00")))
	*d += digest(binary.BigEndian.Uint64(h[:8]))
}

// census is one read of a whole registry for verification.
type census struct {
	Counts
	holds, waves  digest
	groups        []string
	rollouts      []uint64
	groupVersions map[string]*Group // by group 0x00 version
}

// takeCensus reads e whole; device, if set, sees every device.
func takeCensus(e Exporter, device func(*Device)) (*census, error) {
	c := &census{groupVersions: map[string]*Group{}}
	to := counting(&c.Counts)
	countGroup, countDevice, countGroupVersion, countHold, countRollout, countWave := to.Group, to.Device, to.GroupVersion, to.Hold, to.Rollout, to.WaveMember
	to.Group = func(g *Group) error { c.groups = append(c.groups, g.Name); return countGroup(g) }
	to.Device = func(key string, d *Device) error {
		if device != nil {
			device(d)
		}
		return countDevice(key, d)
	}
	to.GroupVersion = func(g *Group) error {
		c.groupVersions[g.Name+"\x00"+strconv.FormatUint(g.Version, 10)] = g
		return countGroupVersion(g)
	}
	to.Hold = func(group, serial string, version uint64) error {
		c.holds.add(group, serial, strconv.FormatUint(version, 10))
		return countHold(group, serial, version)
	}
	to.Rollout = func(ro *Rollout) error { c.rollouts = append(c.rollouts, ro.ID); return countRollout(ro) }
	to.WaveMember = func(id uint64, wave int, serial string) error {
		c.waves.add(strconv.FormatUint(id, 10), strconv.Itoa(wave), serial)
		return countWave(id, wave, serial)
	}
	return c, e.Export(to)
}

// Verify compares target with source: counts of every kind, every group,
// kept group version and rollout (with the waves of the active ones), the
// holds and wave members whole, the CA revocation queue, and sample
// devices (all of them when there are no more) drawn uniformly over the
// registry, each with its audit trail and report.
func Verify(source, target Copy, sample int) (*Verification, error) {
	v := &Verification{}
	var serials []string // a uniform sample of sample devices (reservoir)
	seen := 0
	src, err := takeCensus(source, func(d *Device) {
		if len(serials) < sample {
			serials = append(serials, d.Serial)
		} else if i := rand.IntN(seen + 1); i < sample { //nolint:gosec // sampling, not secrets
			serials[i] = d.Serial
		}
		seen++
	})
	if err != nil {
		return nil, fmt.Errorf("read the source: %w", err)
	}
	dst, err := takeCensus(target, nil)
	if err != nil {
		return nil, fmt.Errorf("read the target: %w", err)
	}
	v.Source, v.Target = src.Counts, dst.Counts
	if v.Source != v.Target {
		v.mismatch("counts: source has %s, target %s", v.Source, v.Target)
	}
	for _, name := range src.groups {
		if err := v.group(source, target, name); err != nil {
			return nil, err
		}
	}
	v.groupVersions(src, dst)
	if src.holds != dst.holds {
		if err := v.holds(source, target, src, dst); err != nil {
			return nil, err
		}
	}
	// Every wave of every rollout is compared member by member when the
	// wave members differ; otherwise those of the active rollouts, which
	// a core on the copy goes on with.
	allWaves := src.waves != dst.waves
	if allWaves {
		v.mismatch("wave members: the rollouts' waves released other members in the target")
	}
	for _, id := range src.rollouts {
		if err := v.rollout(source, target, id, allWaves); err != nil {
			return nil, err
		}
	}
	slices.Sort(serials)
	for _, serial := range serials {
		if err := v.device(source, target, serial); err != nil {
			return nil, err
		}
	}
	v.Sampled = len(serials)
	return v, v.caQueue(source, target)
}

func (v *Verification) mismatch(format string, args ...any) {
	if len(v.Mismatches) < maxMismatches {
		v.Mismatches = append(v.Mismatches, fmt.Sprintf(format, args...))
	}
}

// differ records each field of what that differs between a and b.
func (v *Verification) differ(what string, a, b any) {
	for _, f := range Diff(a, b) {
		v.mismatch("%s: %s differs", what, f)
	}
}

func (v *Verification) group(source, target Copy, name string) error {
	a, err := source.Group(name)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	b, err := target.Group(name)
	if err != nil {
		v.mismatch("group %s: %v in the target", name, err)
		return nil
	}
	v.differ("group "+name, a, b)
	return v.audit(source, target, "group/"+name)
}

func (v *Verification) device(source, target Copy, serial string) error {
	a, err := source.Device(serial)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	b, err := target.Device(serial)
	if err != nil {
		v.mismatch("device %s: %v in the target", serial, err)
		return nil
	}
	v.differ("device "+serial, a, b)
	if err := v.audit(source, target, "device/"+serial); err != nil {
		return err
	}
	err = compare(v, "CA revocations of device "+serial, source, target, func(s Copy) ([]CARevocation, error) { return s.PendingCARevocations(serial) })
	if err != nil {
		return err
	}
	return compare(v, "report of device "+serial, source, target, func(s Copy) (*Report, error) { return s.Report(serial) })
}

// compare reads one thing from each engine and records how they differ.
func compare[T any](v *Verification, what string, source, target Copy, read func(Copy) (T, error)) error {
	a, err := read(source)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	b, err := read(target)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	v.differ(what, a, b)
	return nil
}

// groupVersions compares every kept group version (a held member is read
// with one).
func (v *Verification) groupVersions(src, dst *census) {
	for _, k := range slices.Sorted(maps.Keys(src.groupVersions)) {
		name, version, _ := strings.Cut(k, "\x00")
		what := fmt.Sprintf("kept version %s of group %s", version, name)
		b, ok := dst.groupVersions[k]
		if !ok {
			v.mismatch("%s: missing in the target", what)
			continue
		}
		v.differ(what, src.groupVersions[k], b)
	}
}

// holds names the members held in one registry and not in the other,
// group by group; members held in both at other versions are named by the
// sample's reads (Held, GroupVersion, GroupData), and said here.
func (v *Verification) holds(source, target Copy, src, dst *census) error {
	before := len(v.Mismatches)
	for _, group := range src.groups {
		a, err := heldSet(source, src, group)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		b, err := heldSet(target, dst, group)
		if err != nil {
			return fmt.Errorf("target: %w", err)
		}
		for _, serial := range slices.Sorted(maps.Keys(a)) {
			if !b[serial] {
				v.mismatch("hold of device %s (group %s): held in the source, not in the target", serial, group)
			}
		}
		for _, serial := range slices.Sorted(maps.Keys(b)) {
			if !a[serial] {
				v.mismatch("hold of device %s (group %s): held in the target, not in the source", serial, group)
			}
		}
	}
	if len(v.Mismatches) == before {
		v.mismatch("holds: the same members are held, at other group versions in the target")
	}
	return nil
}

// heldSet are the members of group s holds. A registry that holds none is
// not asked: a bbolt file that predates rollouts, opened read-only, has
// no holds to read.
func heldSet(s Store, c *census, group string) (map[string]bool, error) {
	out := map[string]bool{}
	if c.Holds == 0 {
		return out, nil
	}
	return out, s.HeldMembers(group, func(serial string) error { out[serial] = true; return nil })
}

// rollout compares a rollout's record, and the members of each of its
// waves with their states if it is active, or if waves says so.
func (v *Verification) rollout(source, target Copy, id uint64, waves bool) error {
	a, err := source.Rollout(id)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	what := fmt.Sprintf("rollout %d", id)
	b, err := target.Rollout(id)
	if err != nil {
		v.mismatch("%s: %v in the target", what, err)
		return nil
	}
	v.differ(what, a, b)
	if !waves && !a.State.Active() {
		return nil
	}
	for wave := range a.Released {
		err := compare(v, fmt.Sprintf("%s, wave %d", what, wave), source, target, func(s Copy) ([]MemberState, error) {
			var out []MemberState
			return out, s.WaveStates(id, wave, func(m MemberState) error { out = append(out, m); return nil })
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// auditPage is how many events one read of a trail takes.
const auditPage = 1000

func (v *Verification) audit(source, target Copy, subject string) error {
	var after uint64
	for i := 0; ; i += auditPage {
		a, err := source.Audit(subject, after, auditPage)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		b, err := target.Audit(subject, after, auditPage)
		if err != nil {
			return fmt.Errorf("target: %w", err)
		}
		if len(a) != len(b) {
			v.mismatch("audit of %s: %d events from the %dth in the source, %d in the target", subject, len(a), i+1, len(b))
			return nil
		}
		for j := range a {
			v.differ(fmt.Sprintf("audit of %s, event %d", subject, a[j].Seq), a[j], b[j])
		}
		if len(a) < auditPage {
			return nil
		}
		after = a[len(a)-1].Seq
	}
}

// caQueue compares the whole queue of revocations at the CA.
func (v *Verification) caQueue(source, target Copy) error {
	all := time.Now().AddDate(100, 0, 0) // every entry is due by then
	qa, err := source.CARevocations(all)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	qb, err := target.CARevocations(all)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	order := func(a, b CARevocation) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), cmp.Compare(a.Serial, b.Serial))
	}
	slices.SortFunc(qa.Due, order)
	slices.SortFunc(qb.Due, order)
	v.differ("CA revocation queue", qa.Due, qb.Due)
	return nil
}

// Diff names the fields in which a and b (values of one type) differ,
// recursing into structs, slices and pointers. Times are compared as
// instants to the microsecond (what PostgreSQL keeps); empty and nil maps
// and slices are equal.
func Diff(a, b any) []string {
	var out []string
	diff("", reflect.ValueOf(a), reflect.ValueOf(b), &out)
	return out
}

var timeType = reflect.TypeFor[time.Time]()

func diff(path string, a, b reflect.Value, out *[]string) {
	name := path
	if name == "" {
		name = "the record"
	}
	switch {
	case a.Type() == timeType:
		ta, tb := a.Interface().(time.Time), b.Interface().(time.Time) //nolint:forcetypeassert // checked by type
		if !ta.Truncate(time.Microsecond).Equal(tb.Truncate(time.Microsecond)) {
			*out = append(*out, name)
		}
	case a.Kind() == reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*out = append(*out, name)
			}
			return
		}
		diff(path, a.Elem(), b.Elem(), out)
	case a.Kind() == reflect.Struct:
		for i := range a.NumField() {
			f := a.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			sub := f.Name
			if path != "" && !f.Anonymous {
				sub = path + "." + f.Name
			} else if f.Anonymous {
				sub = path
			}
			diff(sub, a.Field(i), b.Field(i), out)
		}
	case a.Kind() == reflect.Slice:
		if a.Len() != b.Len() {
			*out = append(*out, fmt.Sprintf("%s (%d entries, %d in the target)", name, a.Len(), b.Len()))
			return
		}
		for i := range a.Len() {
			diff(fmt.Sprintf("%s[%d]", name, i), a.Index(i), b.Index(i), out)
		}
	case a.Kind() == reflect.Map:
		if (a.Len() != 0 || b.Len() != 0) && !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, name)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, name)
		}
	}
}
