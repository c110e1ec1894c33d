package confutil

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

type sample struct {
	Name    string            `yaml:"name"`
	Timeout Duration          `yaml:"timeout"`
	Count   int               `yaml:"count"`
	On      bool              `yaml:"on"`
	Labels  map[string]string `yaml:"labels"`
	List    []string          `yaml:"list"`
	Inner   struct {
		Wait Duration `yaml:"wait"`
		Port uint16   `yaml:"port"`
	} `yaml:"inner"`
}

func TestDecodeKeepsStringsLiteral(t *testing.T) {
	// YAML 1.1 (and readers going through JSON) would give "false" and
	// "1.1": the bug of issue 9 item 13.
	var s sample
	if _, err := Decode([]byte("name: no\nlabels: {version: 1.10, on: yes, n: 010}\nlist: [off, 1e3]\n"), &s); err != nil {
		t.Fatal(err)
	}
	if s.Name != "no" {
		t.Errorf("name = %q, want \"no\"", s.Name)
	}
	want := map[string]string{"version": "1.10", "on": "yes", "n": "010"}
	if !reflect.DeepEqual(s.Labels, want) {
		t.Errorf("labels = %v, want %v", s.Labels, want)
	}
	if !reflect.DeepEqual(s.List, []string{"off", "1e3"}) {
		t.Errorf("list = %q", s.List)
	}
}

func TestDecodeOverDefaults(t *testing.T) {
	s := sample{Name: "default", Count: 7}
	s.Inner.Wait = Duration(time.Second)
	if _, err := Decode([]byte("inner:\n  port: 80\n"), &s); err != nil {
		t.Fatal(err)
	}
	if s.Name != "default" || s.Count != 7 || s.Inner.Wait.D() != time.Second || s.Inner.Port != 80 {
		t.Errorf("defaults not kept or value not read: %+v", s)
	}
	for _, empty := range []string{"", "# only a comment\n", "---\n"} {
		if _, err := Decode([]byte(empty), &s); err != nil || s.Name != "default" || s.Inner.Port != 80 {
			t.Errorf("empty document %q: %v, %+v", empty, err, s)
		}
	}
}

func TestDecodeDuration(t *testing.T) {
	var s sample
	if _, err := Decode([]byte("timeout: 1m30s\n"), &s); err != nil || s.Timeout.D() != 90*time.Second {
		t.Fatalf("timeout = %v, err %v", s.Timeout, err)
	}
	for _, bad := range []string{"timeout: 60", "timeout: \"60\"", "timeout: soon", "timeout: [1s]", "timeout: 1.5"} {
		_, err := Decode([]byte(bad+"\n"), &s)
		if got := Fields(err); !reflect.DeepEqual(got, []string{"timeout"}) {
			t.Errorf("%s: fields %v (err %v), want [timeout]", bad, got, err)
		}
	}
}

func TestDecodeReportsEveryBadFieldByPath(t *testing.T) {
	var s sample
	_, err := Decode([]byte(`name: x
count: many
tmeout: 1s
on: maybe
inner:
  wait: 5
  port: 70000
  extra: 1
list: [a, {b: c}]
`), &s)
	want := []string{"count", "tmeout", "on", "inner.wait", "inner.port", "inner.extra", "list[1]"}
	if got := Fields(err); !reflect.DeepEqual(got, want) {
		t.Fatalf("fields = %v, want %v\n%v", got, want, err)
	}
	for _, part := range []string{"tmeout: unknown option (line 3)", "inner.wait: want a duration", "line 6"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error lacks %q:\n%v", part, err)
		}
	}
	// The fields decoded fine are set: validation can report its problems
	// in the same run.
	if s.Name != "x" {
		t.Errorf("name = %q", s.Name)
	}
}

func TestDecodeSyntaxAndDocuments(t *testing.T) {
	var s sample
	if _, err := Decode([]byte("name: [\n"), &s); err == nil {
		t.Error("broken YAML accepted")
	}
	if _, err := Decode([]byte("name: a\n---\nname: b\n"), &s); err == nil {
		t.Error("two documents accepted")
	}
}

func TestDocHas(t *testing.T) {
	var s sample
	doc, err := Decode([]byte("inner:\n  port: 1\n"), &s)
	if err != nil {
		t.Fatal(err)
	}
	if !doc.Has("inner", "port") || doc.Has("inner", "wait") || doc.Has("name") || !doc.Has("inner") {
		t.Error("Has does not answer what the file set")
	}
}

func TestProblemsCollectsAll(t *testing.T) {
	var p Problems
	if p.Err() != nil {
		t.Fatal("empty Problems is an error")
	}
	p.PositiveDuration("a.timeout", Duration(-time.Second))
	p.PositiveDuration("a.ok", Duration(time.Second))
	Range(&p, "a.size", 2_000_000_000, 1, 1_000_000)
	Range(&p, "a.fine", 5, 1, 10)
	p.HostPort("a.addr", "localhost", false)
	p.HostPort("a.dial", "h:0", false)
	p.HostPort("a.listen", "h:0", true)
	p.FileExists("a.file", "/nonexistent/x")
	p.AddErr(errors.Join(&FieldError{Field: "b", Msg: "bad"}, &FieldError{Field: "c", Msg: "bad"}))
	err := p.Err()
	want := []string{"a.timeout", "a.size", "a.addr", "a.dial", "a.file", "b", "c"}
	if got := Fields(err); !reflect.DeepEqual(got, want) {
		t.Fatalf("fields = %v, want %v", got, want)
	}
	for _, part := range []string{
		`a.timeout: must be a positive duration, got "-1s"`,
		"a.size: must be within 1..1000000, got 2000000000",
		`a.addr: want host:port, got "localhost"`,
	} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error lacks %q:\n%v", part, err)
		}
	}
}
