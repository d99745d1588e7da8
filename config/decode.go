package config

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// Limits that keep a hostile or broken file from costing unbounded time:
// aliases and merge keys can expand a small file exponentially.
const (
	maxDepth = 64
	maxNodes = 200_000
)

// decoder walks a yaml.Node tree into the schema's structs, strictly
// (unknown fields, duplicate fields, wrong kinds and bad values are errors),
// keeps going after an error so a file's problems are reported together, and
// remembers where each value was declared so the semantic checks can name a
// line and column too.
type decoder struct {
	file   string
	errs   Errors
	pos    map[any]Position
	budget int
	active map[*yaml.Node]bool // anchors being expanded, to refuse cycles
	dir    string              // directory relative file names are resolved against

	decodeErrs map[Position]bool // where decoding reported problems (see errAt)

	// blocks holds the literal block scalars ("records: |") by the
	// address of the string they were decoded into, and lines the file's
	// lines, so a problem inside embedded text (zone data) can be placed
	// on its own line of the file.
	blocks map[any]*yaml.Node
	lines  []string

	zoneRecords int // records parsed in all zones, against maxZoneRecords
}

var (
	durationType        = reflect.TypeFor[time.Duration]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	enumType            = reflect.TypeFor[enum]()
	listenerType        = reflect.TypeFor[Listener]()
)

func (d *decoder) at(n *yaml.Node) Position {
	return Position{File: d.file, Line: n.Line, Column: n.Column}
}

func (d *decoder) errorf(p Position, format string, args ...any) {
	d.errs = append(d.errs, &Error{Position: p, Msg: fmt.Sprintf(format, args...)})
}

// spend charges n units of work against the budget; it reports false (once
// with an error) when the budget is exhausted.
func (d *decoder) spend(n *yaml.Node, units int) bool {
	if d.budget <= 0 {
		return false
	}
	d.budget -= units
	if d.budget <= 0 {
		d.errorf(d.at(n), "file too large: more than %d values once aliases are expanded", maxNodes)
		return false
	}
	return true
}

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	default:
		return "a document"
	}
}

// field is one settable field of a schema struct.
type field struct {
	name     string // the YAML key
	index    int
	negative bool // a negative duration is allowed (it means "off")
}

// structFields lists the fields of a schema struct by YAML key, in
// declaration order. Fields tagged "-" are not read from the file.
type structFields struct {
	what   string
	list   []field
	byName map[string]field
}

var fieldCache sync.Map // reflect.Type → *structFields

func fieldsOf(t reflect.Type) *structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*structFields)
	}
	sf := &structFields{what: describeType(t), byName: map[string]field{}}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		fl := field{name: name, index: i, negative: f.Tag.Get("config") == "negative"}
		sf.list = append(sf.list, fl)
		sf.byName[name] = fl
	}
	fieldCache.Store(t, sf)
	return sf
}

func (sf *structFields) names() string {
	names := make([]string, len(sf.list))
	for i, f := range sf.list {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}

var typeNames = map[reflect.Type]string{
	reflect.TypeFor[Config]():        "the top level",
	reflect.TypeFor[Admin]():         "admin",
	reflect.TypeFor[AccessLog]():     "access_log",
	reflect.TypeFor[Pool]():          "a pool",
	reflect.TypeFor[Member]():        "a member",
	reflect.TypeFor[Health]():        "health",
	reflect.TypeFor[Passive]():       "passive",
	reflect.TypeFor[TLS]():           "tls",
	reflect.TypeFor[Cookie]():        "a cookie",
	reflect.TypeFor[ZoneRule]():      "a zone rule",
	reflect.TypeFor[DNSZone]():       "a dns zone",
	reflect.TypeFor[DNSService]():    "a dns service",
	reflect.TypeFor[RRL]():           "rrl",
	reflect.TypeFor[TSIGKey]():       "a TSIG key",
	reflect.TypeFor[DNSUpdater]():    "a dns updater",
	reflect.TypeFor[Route]():         "a route",
	reflect.TypeFor[HTTPTimeouts]():  "timeouts",
	reflect.TypeFor[ProxyProtocol](): "proxy_protocol",
	reflect.TypeFor[L2VIP]():         "an l2lb vip",
}

func describeType(t reflect.Type) string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return strings.ToLower(t.Name())
}

type pair struct{ key, val *yaml.Node }

// resolve follows an alias to its anchor, refusing an anchor that contains
// itself. done must be called when the caller has finished with the target.
func (d *decoder) resolve(n *yaml.Node) (target *yaml.Node, done func(), ok bool) {
	if n.Kind != yaml.AliasNode {
		return n, func() {}, true
	}
	t := n.Alias
	if t == nil || d.active[t] {
		d.errorf(d.at(n), "alias *%s refers to the value that contains it", n.Value)
		return nil, nil, false
	}
	d.active[t] = true
	return t, func() { delete(d.active, t) }, true
}

// pairs returns a mapping's key/value pairs with merge keys ("<<: *base")
// expanded, explicit keys winning over merged ones; keys given twice and
// keys that are not scalars are errors.
func (d *decoder) pairs(n *yaml.Node, depth int) []pair {
	if depth > maxDepth {
		d.errorf(d.at(n), "nested more than %d levels deep", maxDepth)
		return nil
	}
	if !d.spend(n, len(n.Content)/2+1) {
		return nil
	}
	var out, merged []pair
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			merged = append(merged, d.merge(v, depth+1)...)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(d.at(k), "expected a field name, got %s", describe(k))
			continue
		}
		if seen[k.Value] {
			d.errorf(d.at(k), "%s given twice in one mapping", k.Value)
			continue
		}
		seen[k.Value] = true
		out = append(out, pair{k, v})
	}
	for _, p := range merged {
		if !seen[p.key.Value] {
			seen[p.key.Value] = true
			out = append(out, p)
		}
	}
	return out
}

// merge expands the value of a merge key: a mapping, or a list of them
// (earlier ones win).
func (d *decoder) merge(v *yaml.Node, depth int) []pair {
	v, done, ok := d.resolve(v)
	if !ok {
		return nil
	}
	defer done()
	switch v.Kind {
	case yaml.MappingNode:
		return d.pairs(v, depth)
	case yaml.SequenceNode:
		var out []pair
		seen := map[string]bool{}
		for _, e := range v.Content {
			e, edone, ok := d.resolve(e)
			if !ok {
				continue
			}
			if e.Kind != yaml.MappingNode {
				d.errorf(d.at(e), "merge (<<) expects mappings, got %s", describe(e))
			} else {
				for _, p := range d.pairs(e, depth+1) {
					if !seen[p.key.Value] {
						seen[p.key.Value] = true
						out = append(out, p)
					}
				}
			}
			edone()
		}
		return out
	default:
		d.errorf(d.at(v), "merge (<<) expects a mapping or a list of mappings, got %s", describe(v))
		return nil
	}
}

var yamlInt = regexp.MustCompile(`^[-+]?(0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$`)

// decode decodes n into v, which must be addressable. name is the YAML key
// (for messages); negative allows negative durations.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, name string, negative bool, depth int) {
	at := n
	if depth > maxDepth {
		d.errorf(d.at(n), "nested more than %d levels deep", maxDepth)
		return
	}
	if !d.spend(n, 1) {
		return
	}
	n, done, ok := d.resolve(n)
	if !ok {
		return
	}
	defer done()
	d.pos[v.Addr().Interface()] = d.at(at)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value leaves the default
	}
	t := v.Type()
	scalar := func(expected string) bool {
		if n.Kind != yaml.ScalarNode {
			d.errorf(d.at(at), "%s: expected %s, got %s", name, expected, describe(n))
			return false
		}
		return true
	}
	switch {
	case t == durationType:
		if !scalar("a duration such as 500ms, 30s or 1m") {
			return
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil || (n.Tag != "!!str" && n.Value != "0") {
			d.errorf(d.at(at), "%s: bad duration %q: expected a number with a unit, such as 500ms, 30s or 1m", name, n.Value)
			return
		}
		if dur < 0 && !negative {
			d.errorf(d.at(at), "%s: negative duration %s", name, n.Value)
			return
		}
		v.SetInt(int64(dur))
		return
	case t.Implements(enumType):
		if !scalar("a word") {
			return
		}
		if err := checkEnum(v.Interface().(enum), n.Value); err != nil {
			d.errorf(d.at(at), "%s: %v", name, err)
			return
		}
		v.SetString(n.Value)
		return
	case reflect.PointerTo(t).Implements(textUnmarshalerType):
		if !scalar("a string") {
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.errorf(d.at(at), "%s: %v", name, err)
		}
		return
	}
	switch t.Kind() {
	case reflect.String:
		if scalar("a string") {
			v.SetString(n.Value)
			if n.Style&yaml.LiteralStyle != 0 {
				d.blocks[v.Addr().Interface()] = n
			}
		}
	case reflect.Bool:
		if !scalar("true or false") {
			return
		}
		b, err := strconv.ParseBool(n.Value)
		if n.Tag != "!!bool" || err != nil {
			d.errorf(d.at(at), "%s: expected true or false, got %s", name, describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		if !scalar("an integer") {
			return
		}
		var i int64
		if n.Tag != "!!int" || !yamlInt.MatchString(n.Value) || n.Decode(&i) != nil || v.OverflowInt(i) {
			d.errorf(d.at(at), "%s: expected an integer, got %s", name, describe(n))
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		if !scalar("a number") {
			return
		}
		var f float64
		if (n.Tag != "!!float" && n.Tag != "!!int") || n.Decode(&f) != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.errorf(d.at(at), "%s: expected a number, got %s", name, describe(n))
			return
		}
		v.SetFloat(f)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errorf(d.at(at), "%s: expected a list, got %s", name, describe(n))
			return
		}
		// Sized once, so the addresses recorded for the elements stay valid.
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, e := range n.Content {
			d.decode(e, s.Index(i), name, negative, depth+1)
		}
		v.Set(s)
	case reflect.Map: // map[string]string
		if n.Kind != yaml.MappingNode {
			d.errorf(d.at(at), "%s: expected a mapping, got %s", name, describe(n))
			return
		}
		m := reflect.MakeMap(t)
		for _, p := range d.pairs(n, depth+1) {
			val := reflect.New(t.Elem()).Elem()
			before := len(d.errs)
			d.decode(p.val, val, p.key.Value, false, depth+1)
			if len(d.errs) == before {
				m.SetMapIndex(reflect.ValueOf(p.key.Value), val)
			}
		}
		v.Set(m)
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		d.pos[v.Interface()] = d.at(at)
		d.decode(n, v.Elem(), name, negative, depth+1)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.errorf(d.at(at), "%s: expected a mapping, got %s", orName(name, describeType(t)), describe(n))
			return
		}
		if t == listenerType {
			d.listener(n, v.Addr().Interface().(*Listener), depth)
			return
		}
		sf := fieldsOf(t)
		for _, p := range d.pairs(n, depth+1) {
			f, ok := sf.byName[p.key.Value]
			if !ok {
				d.errorf(d.at(p.key), "unknown field %q in %s; expected one of %s", p.key.Value, sf.what, sf.names())
				continue
			}
			d.decode(p.val, v.Field(f.index), p.key.Value, f.negative, depth+1)
		}
	default:
		panic("config: no decoder for " + t.String()) // a schema bug, caught by any test
	}
}

func orName(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// listener decodes a listener: name, type and addr, and next to them the
// options of its type, which go to the matching block (l.HTTP, ...). A
// field of another type's options is an unknown field.
func (d *decoder) listener(n *yaml.Node, l *Listener, depth int) {
	pairs := d.pairs(n, depth+1)
	common := fieldsOf(listenerType)
	lv := reflect.ValueOf(l).Elem()
	for _, p := range pairs {
		if p.key.Value == "type" {
			d.decode(p.val, lv.FieldByName("Type"), "type", false, depth+1)
		}
	}
	var opts any
	switch l.Type {
	case TypeRedirect:
		l.Redirect = new(Redirect)
		opts = l.Redirect
	case TypeDNS:
		l.DNS = new(DNS)
		opts = l.DNS
	case TypeHTTP:
		l.HTTP = new(HTTP)
		opts = l.HTTP
	case TypeTCP:
		l.TCP = new(TCP)
		opts = l.TCP
	case TypeIPLB:
		l.IPLB = new(IPLB)
		opts = l.IPLB
	case TypeL2LB:
		l.L2LB = new(L2LB)
		opts = l.L2LB
	}
	var ov reflect.Value
	var of *structFields
	if opts != nil {
		d.pos[opts] = d.at(n)
		ov = reflect.ValueOf(opts).Elem()
		of = fieldsOf(ov.Type())
	}
	for _, p := range pairs {
		k := p.key.Value
		if k == "type" {
			continue
		}
		if f, ok := common.byName[k]; ok {
			d.decode(p.val, lv.Field(f.index), k, false, depth+1)
			continue
		}
		if of == nil {
			// A missing type is reported by the checks, a bad one was
			// reported above; either way the options cannot be checked.
			continue
		}
		f, ok := of.byName[k]
		if !ok {
			names := slices.Concat([]string{common.names()}, []string{of.names()})
			d.errorf(d.at(p.key), "unknown field %q in %s listener; expected one of %s", k, article(l.Type), strings.Join(names, ", "))
			continue
		}
		d.decode(p.val, ov.Field(f.index), k, f.negative, depth+1)
	}
}
