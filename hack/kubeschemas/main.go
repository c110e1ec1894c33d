// Command kubeschemas writes the JSON schemas kubeconform validates against,
// generated offline from the OpenAPI (v2) document the k8s.io/kubernetes
// module ships (api/openapi-spec/swagger.json), so `make chart-test` asks no
// schema server.
//
//	go run ./hack/kubeschemas -spec <module dir>/api/openapi-spec/swagger.json -out DIR
//
// One file per kind and version, named as kubeconform's schema-location
// template {{ .ResourceKind }}{{ .KindSuffix }}.json expects (deployment-apps-v1.json,
// service-v1.json). Each file is standalone: the definitions it references,
// transitively, are copied under "definitions" (references stay references,
// so recursive types such as JSONSchemaProps need no unrolling). Schemas are
// strict like kubeconform's -strict ones: an object with declared properties
// allows no others, so a misspelt field fails. Optional fields may be null,
// as the API server accepts.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	spec := flag.String("spec", "", "path of swagger.json (k8s.io/kubernetes module: api/openapi-spec/swagger.json)")
	out := flag.String("out", "", "directory to write the schemas to")
	flag.Parse()
	if *spec == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: kubeschemas -spec swagger.json -out DIR")
		os.Exit(2)
	}
	n, err := generate(*spec, *out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeschemas:", err)
		os.Exit(1)
	}
	fmt.Printf("kubeschemas: %d schemas in %s\n", n, *out)
}

type gvk struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

// generate writes one schema per group/version/kind of the document.
func generate(specPath, outDir string) (int, error) {
	data, err := os.ReadFile(specPath)
	if err != nil {
		return 0, fmt.Errorf("read spec: %w", err)
	}
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return 0, fmt.Errorf("decode spec %s: %w", specPath, err)
	}
	if len(doc.Definitions) == 0 {
		return 0, fmt.Errorf("spec %s: no definitions", specPath)
	}
	defs := make(map[string]any, len(doc.Definitions))
	for name, d := range doc.Definitions {
		defs[name] = convert(d, name)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return 0, err
	}
	names := make([]string, 0, len(doc.Definitions))
	for name := range doc.Definitions {
		names = append(names, name)
	}
	sort.Strings(names)
	n := 0
	for _, name := range names {
		for _, k := range kinds(doc.Definitions[name]) {
			schema := map[string]any{"$schema": "http://json-schema.org/draft-07/schema#"}
			for key, v := range defs[name].(map[string]any) {
				schema[key] = v
			}
			refs := map[string]any{}
			collect(defs[name], defs, refs)
			if len(refs) > 0 {
				schema["definitions"] = refs
			}
			b, err := json.Marshal(schema)
			if err != nil {
				return n, fmt.Errorf("encode %s: %w", name, err)
			}
			if err := os.WriteFile(filepath.Join(outDir, fileName(k)), b, 0o644); err != nil {
				return n, err
			}
			n++
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("spec %s: no definition carries x-kubernetes-group-version-kind", specPath)
	}
	return n, nil
}

// kinds lists the group/version/kinds a definition is the schema of.
func kinds(def map[string]any) []gvk {
	raw, ok := def["x-kubernetes-group-version-kind"]
	if !ok {
		return nil
	}
	b, _ := json.Marshal(raw)
	var out []gvk
	if json.Unmarshal(b, &out) != nil {
		return nil
	}
	return out
}

// fileName is kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}.json: the
// kind lower-cased, then the first DNS label of the group (none for the
// core group) and the version: clusterrole-rbac-v1.json.
func fileName(k gvk) string {
	suffix := "-" + k.Version
	if k.Group != "" {
		suffix = "-" + strings.Split(k.Group, ".")[0] + suffix
	}
	return strings.ToLower(k.Kind) + suffix + ".json"
}

const refPrefix = "#/definitions/"

// convert turns one OpenAPI v2 schema into JSON schema: int-or-string and
// Quantity accept numbers, objects with properties are closed, optional
// properties accept null.
func convert(v any, name string) any {
	m, ok := v.(map[string]any)
	if !ok {
		if l, ok := v.([]any); ok {
			out := make([]any, len(l))
			for i, e := range l {
				out[i] = convert(e, "")
			}
			return out
		}
		return v
	}
	switch {
	case m["format"] == "int-or-string":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
	case name == "io.k8s.apimachinery.pkg.api.resource.Quantity":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
	}
	out := map[string]any{}
	for k, e := range m {
		switch {
		case k == "description" || strings.HasPrefix(k, "x-kubernetes-"):
			// Not validation; descriptions are most of the size.
		case k == "properties":
			props := map[string]any{}
			required := map[string]bool{}
			if r, ok := m["required"].([]any); ok {
				for _, f := range r {
					if s, ok := f.(string); ok {
						required[s] = true
					}
				}
			}
			for p, ps := range e.(map[string]any) {
				c := convert(ps, "")
				if !required[p] {
					c = nullable(c)
				}
				props[p] = c
			}
			out[k] = props
		default:
			out[k] = convert(e, "")
		}
	}
	if _, hasProps := m["properties"]; hasProps {
		if _, set := m["additionalProperties"]; !set {
			out["additionalProperties"] = false
		}
	}
	return out
}

// nullable lets a schema also accept null.
func nullable(s any) any {
	m, ok := s.(map[string]any)
	if !ok {
		return s
	}
	if t, ok := m["type"].(string); ok {
		c := make(map[string]any, len(m))
		for k, v := range m {
			c[k] = v
		}
		c["type"] = []any{t, "null"}
		return c
	}
	// A reference or a oneOf: null as one more alternative.
	return map[string]any{"oneOf": []any{m, map[string]any{"type": "null"}}}
}

// collect adds every definition v references, transitively, to refs.
func collect(v any, defs map[string]any, refs map[string]any) {
	switch t := v.(type) {
	case map[string]any:
		if r, ok := t["$ref"].(string); ok {
			name := strings.TrimPrefix(r, refPrefix)
			if _, seen := refs[name]; !seen {
				if d, ok := defs[name]; ok {
					refs[name] = d
					collect(d, defs, refs)
				}
			}
		}
		for _, e := range t {
			collect(e, defs, refs)
		}
	case []any:
		for _, e := range t {
			collect(e, defs, refs)
		}
	}
}
