package eve

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// sampleOf builds a JSON value for type t with every json-tagged key of
// every struct set to a value distinct per key, so a key the scanner's
// tables missed decodes differently from encoding/json.
func sampleOf(t reflect.Type, key string) any {
	switch t {
	case reflect.TypeFor[string]():
		return "value of " + key
	case reflect.TypeFor[flexUint]():
		return len(key)
	case reflect.TypeFor[span]():
		return []any{key}
	case reflect.TypeFor[map[string]span]():
		return map[string]any{key: []any{key}}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return sampleOf(t.Elem(), key)
	case reflect.Slice:
		return []any{sampleOf(t.Elem(), key), sampleOf(t.Elem(), key+"2")}
	case reflect.Struct:
		m := map[string]any{}
		for i := range t.NumField() {
			k, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			if k != "" && k != "-" {
				m[k] = sampleOf(t.Field(i).Type, key+"."+k)
			}
		}
		return m
	}
	panic("no sample for " + t.String())
}

// The json tags are the only declaration of the EVE keys (issue 8: the
// scanner used to repeat each of them as a case string): every tagged key,
// nested or not, decodes through the derived tables exactly as encoding/json
// decodes it through the tags.
func TestEveryTaggedKeyIsDecodedFromTheTagsAlone(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[rawRecord](), reflect.TypeFor[[]rawHeader]()} {
		line, err := json.Marshal(sampleOf(typ, "k"))
		if err != nil {
			t.Fatal(err)
		}
		got, want := reflect.New(typ), reflect.New(typ)
		s := scanner{b: line}
		var derr error
		if typ.Kind() == reflect.Struct {
			derr = rawRecordCodec.decode(&s, got.UnsafePointer())
		} else {
			derr = headersDecoder(&s, got.UnsafePointer())
		}
		if derr != nil {
			t.Fatalf("%s: scanner: %v", typ, derr)
		}
		if err := json.Unmarshal(line, want.Interface()); err != nil {
			t.Fatalf("%s: encoding/json: %v", typ, err)
		}
		if typ == reflect.TypeFor[rawRecord]() {
			g, w := normalise(*got.Interface().(*rawRecord)), normalise(*want.Interface().(*rawRecord))
			if !reflect.DeepEqual(g, w) || reflect.ValueOf(g).IsZero() {
				t.Errorf("rawRecord from %s:\n scanner       %+v\n encoding/json %+v", line, g, w)
			}
			continue
		}
		if !reflect.DeepEqual(got.Interface(), want.Interface()) {
			t.Errorf("%s from %s: scanner %+v, encoding/json %+v", typ, line, got.Interface(), want.Interface())
		}
	}
}
