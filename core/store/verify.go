package store

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"time"
)

// Verifying a copy of a registry (prov-core store migrate): the counts of
// every kind of record, then a sample read through each engine's Store
// methods (what a core serving from it would read) and compared field by
// field.

// Copy is an engine that can be read whole and through the contract.
type Copy interface {
	Store
	Exporter
}

// Verification is what Verify found.
type Verification struct {
	Source, Target Counts
	// Sampled is how many devices were compared (with their audit trails
	// and CA revocations); every group and the whole CA revocation queue
	// are compared too.
	Sampled int
	// Mismatches name each record and field that differs; values are not
	// shown (a device's data may be a secret).
	Mismatches []string
}

// OK reports whether the copy holds what the source does.
func (v *Verification) OK() bool { return v.Source == v.Target && len(v.Mismatches) == 0 }

// maxMismatches bounds the mismatches reported: the first ones say enough.
const maxMismatches = 100

// Verify compares target with source: counts of every kind, every group,
// the CA revocation queue, and sample devices (all of them when there are
// no more) drawn uniformly over the registry, each with its audit trail.
func Verify(source, target Copy, sample int) (*Verification, error) {
	v := &Verification{}
	var serials []string // a uniform sample of sample devices (reservoir)
	var groups []string
	seen := 0
	err := source.Export(Exported{
		Group: func(g *Group) error { v.Source.Groups++; groups = append(groups, g.Name); return nil },
		Device: func(_ string, d *Device) error {
			v.Source.Devices++
			if len(serials) < sample {
				serials = append(serials, d.Serial)
			} else if i := rand.IntN(seen + 1); i < sample { //nolint:gosec // sampling, not secrets
				serials[i] = d.Serial
			}
			seen++
			return nil
		},
		Audit:        func(*Event) error { v.Source.Audit++; return nil },
		CARevocation: func(*CARevocation) error { v.Source.CARevocations++; return nil },
		BatchMember:  func(string, string) error { v.Source.BatchMembers++; return nil },
	})
	if err != nil {
		return nil, fmt.Errorf("read the source: %w", err)
	}
	if v.Target, err = Count(target); err != nil {
		return nil, fmt.Errorf("read the target: %w", err)
	}
	if v.Source != v.Target {
		v.mismatch("counts: source has %s, target %s", v.Source, v.Target)
	}
	for _, name := range groups {
		if err := v.group(source, target, name); err != nil {
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
	pa, err := source.PendingCARevocations(serial)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	pb, err := target.PendingCARevocations(serial)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	v.differ("CA revocations of device "+serial, pa, pb)
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
