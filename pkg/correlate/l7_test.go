package correlate

import (
	"encoding/json"
	"testing"
)

func TestMergeHTTPVals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		a, b    string
		want    string
		wantErr bool
	}{
		{"both empty stay empty", "", "", "", false},
		{"empty incoming keeps existing", `{"1":"x"}`, "", `{"1":"x"}`, false},
		{"empty existing takes incoming", "", `{"1":"x"}`, `{"1":"x"}`, false},
		{"disjoint transactions are united in id order", `{"10":"b"}`, `{"2":"a"}`, `{"2":"a","10":"b"}`, false},
		{"same transaction keeps existing", `{"1":"x"}`, `{"1":"y"}`, `{"1":"x"}`, false},
		{"empty-string transaction is filled", `{"1":""}`, `{"1":"y"}`, `{"1":"y"}`, false},
		{"object values survive", `{"1":{"url":"/a","status":200}}`, `{"2":{"url":"/b"}}`, `{"1":{"url":"/a","status":200},"2":{"url":"/b"}}`, false},
		{"invalid incoming keeps existing and reports", `{"1":"x"}`, `not json`, `{"1":"x"}`, true},
		{"invalid existing takes incoming and reports", `[1,2]`, `{"1":"x"}`, `{"1":"x"}`, true},
		{"lone invalid value becomes empty", "", `{"1":`, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MergeHTTPVals(tc.a, tc.b)
			if (err != nil) != tc.wantErr {
				t.Errorf("err = %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
			if got != "" && !json.Valid([]byte(got)) {
				t.Errorf("result %q is not valid JSON", got)
			}
		})
	}
}

func FuzzMergeHTTPValsAlwaysValid(f *testing.F) {
	f.Add(`{"1":"x"}`, `{"2":"y"}`)
	f.Add(``, `{"0":{"a":1}}`)
	f.Add(`{"0":null}`, `garbage`)
	f.Fuzz(func(t *testing.T, a, b string) {
		got, _ := MergeHTTPVals(a, b)
		if got == "" {
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(got), &m); err != nil {
			t.Fatalf("MergeHTTPVals(%q, %q) = %q: not a JSON object: %v", a, b, got, err)
		}
		// Nothing a valid side held is lost.
		for _, in := range []string{a, b} {
			var im map[string]json.RawMessage
			if json.Unmarshal([]byte(in), &im) != nil {
				continue
			}
			for k := range im {
				if _, ok := m[k]; !ok {
					t.Fatalf("MergeHTTPVals(%q, %q) = %q lost key %q", a, b, got, k)
				}
			}
		}
	})
}
