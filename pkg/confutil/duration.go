// Package confutil holds what the flowlens configuration packages
// (pkg/agentconfig, pkg/aggregatorconfig) share, so both binaries speak one
// dialect: durations written as "5s" and never as bare numbers, YAML read
// strictly (unknown keys are errors, strings keep their literal text), and
// every bad field reported at once, named by its path in the file.
package confutil

import (
	"encoding/json"
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written in config files the way people write
// them ("5s", "1m30s"). A bare number is rejected: its unit would be a guess
// (the aggregator once read `inactiveTimeout: 60` as 60 ns).
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String writes the duration as "5s".
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML accepts only a YAML string that time.ParseDuration reads.
// Errors are *yaml.TypeError so the decoder goes on and reports the other
// fields too; Decode turns the position into the field's path.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf(
			"line %d column %d: want a duration with a unit such as \"5s\" or \"1m30s\", got %s",
			n.Line, n.Column, describe(n))}}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf(
			"line %d column %d: want a duration such as \"5s\" or \"1m30s\", got %q", n.Line, n.Column, n.Value)}}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as "5s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalJSON writes the duration as "5s" (for logging a configuration).
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if n.ShortTag() == "!!int" || n.ShortTag() == "!!float" {
		return "the bare number " + n.Value
	}
	return fmt.Sprintf("%s %s", n.ShortTag(), n.Value)
}
