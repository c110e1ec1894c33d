package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// A two-kind document in the shape of Kubernetes' swagger.json.
const spec = `{"definitions": {
  "io.k8s.api.apps.v1.Thing": {
    "description": "d", "type": "object", "required": ["spec"],
    "properties": {
      "spec": {"$ref": "#/definitions/io.k8s.api.apps.v1.ThingSpec"},
      "note": {"type": "string", "description": "optional"}
    },
    "x-kubernetes-group-version-kind": [{"group": "apps", "version": "v1", "kind": "Thing"}]
  },
  "io.k8s.api.apps.v1.ThingSpec": {
    "type": "object", "required": ["port"],
    "properties": {
      "port": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString"},
      "size": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.api.resource.Quantity"},
      "self": {"$ref": "#/definitions/io.k8s.api.apps.v1.ThingSpec"},
      "labels": {"type": "object", "additionalProperties": {"type": "string"}}
    }
  },
  "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string"},
  "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string"},
  "io.k8s.api.core.v1.Unrelated": {"type": "object", "properties": {"x": {"type": "string"}},
    "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "Unrelated"}]}
}}`

func TestGenerateWritesStandaloneStrictSchemasNamedAsKubeconformLooksThemUp(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "swagger.json")
	if err := os.WriteFile(in, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	n, err := generate(in, out)
	if err != nil || n != 2 {
		t.Fatalf("generate: %d schemas, %v", n, err)
	}
	var thing map[string]any
	b, err := os.ReadFile(filepath.Join(out, "thing-apps-v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &thing); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "unrelated-v1.json")); err != nil {
		t.Errorf("core kind: %v", err)
	}
	if thing["additionalProperties"] != false {
		t.Errorf("top level not closed: %v", thing["additionalProperties"])
	}
	if _, ok := thing["description"]; ok {
		t.Error("description kept")
	}
	props := thing["properties"].(map[string]any)
	if !reflect.DeepEqual(props["note"], map[string]any{"type": []any{"string", "null"}}) {
		t.Errorf("optional note = %v, want string or null", props["note"])
	}
	if !reflect.DeepEqual(props["spec"], map[string]any{"$ref": "#/definitions/io.k8s.api.apps.v1.ThingSpec"}) {
		t.Errorf("required spec = %v, want the bare reference", props["spec"])
	}
	defs := thing["definitions"].(map[string]any)
	if len(defs) != 3 {
		t.Errorf("definitions %v: want ThingSpec, IntOrString and Quantity only (transitively, once despite the self reference)", keys(defs))
	}
	spec := defs["io.k8s.api.apps.v1.ThingSpec"].(map[string]any)
	if spec["additionalProperties"] != false {
		t.Error("nested object not closed")
	}
	if labels := spec["properties"].(map[string]any)["labels"].(map[string]any); !reflect.DeepEqual(labels["additionalProperties"], map[string]any{"type": "string"}) {
		t.Errorf("a map's additionalProperties replaced: %v", labels)
	}
	ios := defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"].(map[string]any)
	if len(ios["oneOf"].([]any)) != 2 {
		t.Errorf("int-or-string = %v", ios)
	}
	q := defs["io.k8s.apimachinery.pkg.api.resource.Quantity"].(map[string]any)
	if !reflect.DeepEqual(q["oneOf"], []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}) {
		t.Errorf("Quantity = %v", q)
	}
}

func TestGenerateRefusesADocumentWithoutKinds(t *testing.T) {
	in := filepath.Join(t.TempDir(), "swagger.json")
	if err := os.WriteFile(in, []byte(`{"definitions": {"a": {"type": "string"}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := generate(in, t.TempDir()); err == nil {
		t.Error("no error for a document without x-kubernetes-group-version-kind")
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
