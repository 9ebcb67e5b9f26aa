package inventory

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The paged, pushed-down listing returns exactly what filtering every
// device would, page by page, on both backends: including values the
// prefilter cannot see (escaped characters, non-ASCII, a KELVIN SIGN that
// lower-cases to "k") and a metadata value that looks like a filter.
func TestListMatchesFullScan(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			s, err := NewStore(openDB(t, backend), nil)
			if err != nil {
				t.Fatal(err)
			}
			if s.indexed != (backend == "postgresql") {
				t.Fatalf("indexed = %v on %s", s.indexed, backend)
			}
			if _, err := s.CreateCollection(Collection{Name: "lab"}); err != nil {
				t.Fatal(err)
			}
			names := []string{"Kiosk-%d", "\u212aiosk-%d", "café <%d>", "Laptop-%d", "a&b \"%d\"", "L\u0130NUX_%d%%"}
			var all []*Device
			for i := range 60 {
				in := DeviceInput{Identifiers: []string{fmt.Sprintf("ID-%03d", i)}, Name: fmt.Sprintf(names[i%len(names)], i),
					Owner: []string{"alice", "bob<x>"}[i%2], Type: "laptop"}
				if i%4 == 0 {
					in.Collection = "lab"
				}
				if i%7 == 0 {
					in.Metadata = map[string]string{"status": "disabled"}
				}
				d, err := s.Create(in)
				if err != nil {
					t.Fatal(err)
				}
				if i%3 == 0 {
					st := StatusDisabled
					if d, err = s.Update(d.ID, DevicePatch{Status: &st}); err != nil {
						t.Fatal(err)
					}
				}
				all = append(all, d)
			}
			slices.SortFunc(all, func(a, b *Device) int { return strings.Compare(a.ID, b.ID) })
			for _, o := range []ListOptions{
				{}, {Status: StatusDisabled}, {Status: StatusActive, Collection: "lab"}, {Owner: "bob<x>"},
				{Query: "kiosk"}, {Query: "KIOSK-1"}, {Query: "café"}, {Query: "<1"}, {Query: "id-00"}, {Query: "nothing"}, {Query: "linux_1"}, {Query: "inux_5%"}, {Query: "iosk-1"},
				{Query: "laptop", Status: StatusDisabled, Owner: "bob<x>"}, {Collection: "none"},
			} {
				var want []string
				for _, d := range all {
					if o.match(d) {
						want = append(want, d.ID)
					}
				}
				if n, err := s.Count(o); err != nil || n != len(want) {
					t.Fatalf("%+v: count %d %v, want %d", o, n, err, len(want))
				}
				for _, limit := range []int{1, 4, 100} {
					o := o
					o.Limit = limit
					var got []string
					for pages := 0; ; pages++ {
						devs, next, err := s.List(o)
						if err != nil {
							t.Fatal(err)
						}
						if len(devs) > limit || (next != "" && len(devs) != limit) {
							t.Fatalf("%+v: page of %d with next %q", o, len(devs), next)
						}
						for _, d := range devs {
							got = append(got, d.ID)
						}
						if next == "" {
							break
						}
						if pages > 100 {
							t.Fatal("no end")
						}
						o.Cursor = next
					}
					if !slices.Equal(got, want) {
						t.Fatalf("%+v: got %d devices %v, want %d %v", o, len(got), got, len(want), want)
					}
				}
			}
		})
	}
}

// Count skips decoding a device when its stored JSON has no metadata and
// the filter is `"key":"value"` tests; that is exact only while each
// filter key occurs once in a device's JSON. This fills every field of
// Device (but Metadata), nested ones included, so a field added later
// with one of those JSON keys fails here.
func TestFilterKeysOccurOnce(t *testing.T) {
	var d Device
	fill(reflect.ValueOf(&d).Elem())
	d.Metadata = nil
	b, err := json.Marshal(&d)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"status", "collection", "owner", "type", "source"} {
		if n := strings.Count(string(b), `"`+key+`":`); n != 1 {
			t.Errorf("%q occurs %d times in %s", key, n, b)
		}
	}
	if strings.Contains(string(b), string(metadataKey)) {
		t.Errorf("no metadata, yet %s", b)
	}
}

// fill sets every field reachable from v to a non-zero value.
func fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0))
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k)
		fill(e)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem())
		v.Set(p)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			v.Set(reflect.ValueOf(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i))
			}
		}
	}
}
