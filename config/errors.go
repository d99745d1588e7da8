package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Position is a place in a configuration file. Line and Column count from
// 1; a Column of 0 means the column is not known (YAML syntax errors name
// only a line).
type Position struct {
	File   string
	Line   int
	Column int
}

// String returns "FILE:LINE:COL", or "FILE:LINE" without a column.
func (p Position) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Column == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	default:
		return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
	}
}

// Error is one problem found in a configuration file, at a position.
type Error struct {
	Position
	// Msg says what is wrong and what was expected.
	Msg string
}

// Error returns "FILE:LINE:COL: MSG", the form compilers and editors use.
func (e *Error) Error() string { return e.Position.String() + ": " + e.Msg }

// Errors is every problem found in a configuration file, in file order.
// [Load] and [Parse] return it (never empty) when the file is invalid.
type Errors []*Error

// Error lists the problems, one a line.
func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap returns the problems, for errors.As and errors.Is.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// sort orders the problems by position and drops exact duplicates (an
// alias expanded twice reports its problems once).
func (es Errors) sort() Errors {
	slices.SortStableFunc(es, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	return slices.CompactFunc(es, func(a, b *Error) bool { return *a == *b })
}
