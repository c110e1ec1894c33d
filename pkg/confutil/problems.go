package confutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
)

// FieldError is one bad option, named the way it is written in the YAML
// file ("connections.activeTimeout", "listen[1]").
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Problems collects every bad field of a configuration, so that a user
// fixes the file in one go instead of one error per start-up. The zero
// value is ready to use.
type Problems struct {
	errs []error
}

// Addf records that field is bad.
func (p *Problems) Addf(field, format string, args ...any) {
	p.errs = append(p.errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// AddErr records the errors of err (a Decode error, or a joined set of
// them) as they are.
func (p *Problems) AddErr(err error) {
	if err == nil {
		return
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		p.errs = append(p.errs, j.Unwrap()...)
		return
	}
	p.errs = append(p.errs, err)
}

// Err is every recorded problem joined (one per line), or nil.
func (p *Problems) Err() error { return errors.Join(p.errs...) }

// PositiveDuration requires d > 0.
func (p *Problems) PositiveDuration(field string, d Duration) {
	if d <= 0 {
		p.Addf(field, "must be a positive duration, got %q", d.String())
	}
}

// Integer is what Range checks.
type Integer interface {
	~int | ~int32 | ~int64 | ~uint16 | ~uint32 | ~uint64
}

// Range requires lo <= v <= hi. Every size or count option has an upper
// bound, stated in the error and in the example files: a value past what
// memory can hold would otherwise surface as "out of memory" long after
// start-up, or at once without naming the option.
func Range[T Integer](p *Problems, field string, v, lo, hi T) {
	if v < lo || v > hi {
		p.Addf(field, "must be within %d..%d, got %d", lo, hi, v)
	}
}

// HostPort requires host:port with a numeric port; listen addresses may use
// port 0 (any free port), addresses to dial may not.
func (p *Problems) HostPort(field, v string, listen bool) {
	if err := CheckHostPort(v, listen); err != nil {
		p.Addf(field, "%v", err)
	}
}

// CheckHostPort is HostPort's test, for callers that build their own
// message.
func CheckHostPort(v string, listen bool) error {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("want host:port, got %q", v)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	lo := uint64(1)
	if listen {
		lo = 0
	}
	if err != nil || n < lo {
		return fmt.Errorf("want host:port with a port within %d..65535, got %q", lo, v)
	}
	return nil
}

// FileExists requires path to name something that exists (an empty path is
// not checked: the option is off).
func (p *Problems) FileExists(field, path string) {
	if path == "" {
		return
	}
	if _, err := os.Stat(path); err != nil {
		p.Addf(field, "%v", err)
	}
}

// Fields lists the fields named by the FieldErrors in err, in order (for
// tests, and for callers that react to a particular field).
func Fields(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if fe, ok := err.(*FieldError); ok {
			out = append(out, fe.Field)
			return
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}
