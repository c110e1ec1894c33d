package confutil

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Doc is a decoded YAML document, kept to answer what the file itself said
// (a block given without a key), which the decoded struct cannot tell.
type Doc struct {
	root *yaml.Node
}

// Has reports whether the file sets the mapping key at path, e.g.
// Has("sinks", "jsonl", "enabled").
func (d *Doc) Has(path ...string) bool {
	if d == nil || d.root == nil {
		return false
	}
	n := d.root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for _, key := range path {
		if n.Kind != yaml.MappingNode {
			return false
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return false
		}
		n = next
	}
	return true
}

// Decode reads one YAML document into out, over what out already holds (the
// defaults), strictly:
//
//   - a key out has no field for is an error (a misspelt option silently
//     ignored is a default the user did not choose);
//   - YAML 1.2 rules, with string fields taking the literal text: `no`
//     stays "no" and `1.10` stays "1.10" (a YAML 1.1 reader, or one going
//     through JSON, turns them into false and 1.1);
//   - every type error is reported, each naming the field by its path in
//     the file (*FieldError), not only the first.
//
// Struct fields are matched by their `yaml` tags. An empty document leaves
// out as it is.
func Decode(data []byte, out any) (*Doc, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	doc := &Doc{root: &root}
	if root.Kind == 0 {
		return doc, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(out)
	if err == nil {
		var extra yaml.Node
		if dec.Decode(&extra) != io.EOF {
			return nil, errors.New("more than one YAML document; want one")
		}
		return doc, nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return nil, err
	}
	idx := indexPaths(&root)
	var errs []error
	for _, msg := range te.Errors {
		errs = append(errs, idx.fieldError(msg))
	}
	return doc, errors.Join(errs...)
}

// pos is one node of the document with the field path it sets.
type pos struct {
	line, col int
	path      string
	key       bool
	kind      yaml.Kind
	value     string
}

type pathIndex []pos

func indexPaths(root *yaml.Node) pathIndex {
	var idx pathIndex
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			idx = append(idx, pos{line: n.Line, col: n.Column, path: path, kind: n.Kind})
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				idx = append(idx, pos{line: k.Line, col: k.Column, path: p, key: true, kind: k.Kind, value: k.Value})
				walk(v, p)
			}
		case yaml.SequenceNode:
			idx = append(idx, pos{line: n.Line, col: n.Column, path: path, kind: n.Kind})
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		case yaml.ScalarNode:
			idx = append(idx, pos{line: n.Line, col: n.Column, path: path, kind: n.Kind, value: n.Value})
		}
	}
	walk(root, "")
	return idx
}

var (
	reLine     = regexp.MustCompile(`^line (\d+)(?: column (\d+))?: (.*)$`)
	reUnknown  = regexp.MustCompile(`^field (\S+) not found in type `)
	reTwice    = regexp.MustCompile(`^field (\S+) already set in type `)
	reBadValue = regexp.MustCompile("^cannot unmarshal (\\S+)(?: `(.*)`)? into (.*)$")
)

// fieldError turns one of yaml.v3's "line N: ..." messages into a
// FieldError naming the field at that position.
func (idx pathIndex) fieldError(msg string) error {
	m := reLine.FindStringSubmatch(msg)
	if m == nil {
		return errors.New(msg)
	}
	line, _ := strconv.Atoi(m[1])
	col, _ := strconv.Atoi(m[2])
	text := m[3]
	at := fmt.Sprintf(" (line %d)", line)
	if um := reUnknown.FindStringSubmatch(text); um != nil {
		return &FieldError{Field: idx.findKey(line, um[1]), Msg: "unknown option" + at}
	}
	if tm := reTwice.FindStringSubmatch(text); tm != nil {
		return &FieldError{Field: idx.findKey(line, tm[1]), Msg: "set twice" + at}
	}
	kind, value := yaml.ScalarNode, ""
	if bm := reBadValue.FindStringSubmatch(text); bm != nil {
		switch bm[1] {
		case "!!map":
			kind = yaml.MappingNode
			text = "cannot read a mapping as " + goTypeName(bm[3])
		case "!!seq":
			kind = yaml.SequenceNode
			text = "cannot read a list as " + goTypeName(bm[3])
		default:
			value = strings.TrimSuffix(bm[2], "...")
			text = fmt.Sprintf("cannot read %s `%s` as %s", bm[1], bm[2], goTypeName(bm[3]))
		}
	}
	return &FieldError{Field: idx.findValue(line, col, kind, value), Msg: text + at}
}

// findKey is the path of the key named name on line.
func (idx pathIndex) findKey(line int, name string) string {
	for _, p := range idx {
		if p.line == line && p.key && p.value == name {
			return p.path
		}
	}
	return fmt.Sprintf("line %d", line)
}

// findValue is the path of the value at line:col; without a column, of
// the values of that kind on line starting with prefix, or what they have
// in common.
func (idx pathIndex) findValue(line, col int, kind yaml.Kind, prefix string) string {
	var cands []string
	for _, p := range idx {
		if p.line != line {
			continue
		}
		if col > 0 && p.col == col && !p.key {
			return p.path
		}
		if !p.key && p.kind == kind && strings.HasPrefix(p.value, prefix) {
			cands = append(cands, p.path)
		}
	}
	if len(cands) == 0 {
		for _, p := range idx {
			if p.line == line {
				cands = append(cands, p.path)
			}
		}
	}
	if len(cands) == 0 {
		return fmt.Sprintf("line %d", line)
	}
	common := cands[0]
	for _, c := range cands[1:] {
		common = commonPath(common, c)
	}
	if common == "" {
		return fmt.Sprintf("line %d", line)
	}
	return common
}

// commonPath is the longest path both a and b are in.
func commonPath(a, b string) string {
	for a != b {
		if len(a) > len(b) {
			a = parentPath(a)
		} else {
			b = parentPath(b)
		}
	}
	return a
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// goTypeName says what a Go type expects in YAML terms.
func goTypeName(t string) string {
	switch {
	case strings.HasPrefix(t, "int"):
		return "an integer"
	case strings.HasPrefix(t, "uint"):
		return "a non-negative integer within " + t + " range"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["):
		return "a mapping"
	}
	return t
}
