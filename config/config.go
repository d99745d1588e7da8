package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads and validates the configuration file at path. See [Parse].
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates a configuration file's contents; name is the
// file's name, used in error messages and to resolve the relative file
// names the configuration holds (key, token and zone files), which Parse
// reads.
//
// Decoding is strict: unknown fields, fields given twice, values of the
// wrong kind (a list for a string, "5" for a duration) and values out of
// range are errors, as are unknown pools, duplicate names, bad addresses,
// two listeners on one address, an admin endpoint off loopback without a
// token, and files that cannot be read. Every problem found is returned,
// as [Errors] naming file, line and column; Parse never stops at the
// first. Defaults are filled in on the returned Config where they are
// plain values (admin address, shutdown timeout, policy, probe type, log
// format); the rest stay zero, meaning the default documented on the field.
func Parse(name string, data []byte) (*Config, error) {
	d := &decoder{
		file:   name,
		pos:    map[any]Position{},
		budget: maxNodes,
		active: map[*yaml.Node]bool{},
		dir:    filepath.Dir(name),
		blocks: map[any]*yaml.Node{},
		lines:  strings.Split(string(data), "\n"),
	}
	root, err := d.document(data)
	if err != nil {
		return nil, err
	}
	c := &Config{file: name}
	d.decode(root, reflect.ValueOf(c).Elem(), "", false, 0)
	d.decodeErrs = map[Position]bool{}
	for _, e := range d.errs {
		d.decodeErrs[e.Position] = true
	}
	d.validate(c)
	if len(d.errs) > 0 {
		return nil, d.errs.sort()
	}
	c.pos = d.pos
	return c, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document parses data as exactly one YAML document whose root is a mapping.
func (d *decoder) document(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errors{{Position: Position{File: d.file, Line: 1, Column: 1}, Msg: "empty file: expected a mapping with pools and listeners"}}
		}
		return nil, d.syntaxError(data, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, Errors{{Position: d.at(&extra), Msg: "a second YAML document: expected one (remove the '---')"}}
	case !errors.Is(err, io.EOF):
		return nil, d.syntaxError(data, err)
	}
	if len(doc.Content) != 1 {
		return nil, Errors{{Position: d.at(&doc), Msg: "empty file: expected a mapping with pools and listeners"}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, Errors{{Position: d.at(root), Msg: "expected a mapping with pools and listeners, got " + describe(root)}}
	}
	return root, nil
}

// syntaxError turns a YAML parser error into an Error. The parser names
// only a line, and often the line where the enclosing block starts rather
// than the offending one, so the line is refined with problemLine; the
// column is left unknown.
func (d *decoder) syntaxError(data []byte, err error) error {
	line, msg := splitYAMLError(err)
	if l := problemLine(data, line, msg); l > 0 {
		line = l
	}
	return Errors{{Position: Position{File: d.file, Line: line}, Msg: "syntax error: " + msg}}
}

// splitYAMLError splits "yaml: line N: msg" into N and msg.
func splitYAMLError(err error) (int, string) {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return line, m[2]
	}
	return 0, strings.TrimPrefix(msg, "yaml: ")
}

// problemLine finds the line a syntax error is on: the first line from
// which on the prefix of the file up to that line fails to parse with the
// same message. A prefix that holds the offending line fails with the
// message the whole file does (the parser stops at the first problem),
// while a shorter one either parses or fails differently (cut inside a
// flow collection or a quoted string), so a binary search over the lines,
// from the one the parser named (where the enclosing block starts) to the
// last, costs a few parses. Zero means not found.
func problemLine(data []byte, from int, msg string) int {
	ends := []int{0} // ends[k] is the length of the first k lines
	for i, c := range data {
		if c == '\n' {
			ends = append(ends, i+1)
		}
	}
	fails := func(k int) bool {
		dec := yaml.NewDecoder(bytes.NewReader(data[:ends[k]]))
		for {
			var n yaml.Node
			err := dec.Decode(&n)
			if err == nil {
				continue
			}
			if errors.Is(err, io.EOF) {
				return false
			}
			_, m := splitYAMLError(err)
			return m == msg
		}
	}
	lo, hi := max(from, 1), len(ends)-1
	if lo > hi || !fails(hi) {
		return 0
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// File returns the name the configuration was loaded from.
func (c *Config) File() string { return c.file }

// Path resolves a file name the configuration holds (the access log's
// path, for instance) the way Load and Parse do: relative to the
// configuration file's directory.
func (c *Config) Path(name string) string {
	if name == "" || filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(filepath.Dir(c.file), name)
}

// Position returns where the value ptr points to was declared in the file:
// ptr is the address of a field or element of c, such as
// &c.Pools[0].Members[2].Addr or &c.Listeners[1] (a struct's position is
// that of its mapping). Values the file did not set have no position; the
// zero Position is returned for them.
func (c *Config) Position(ptr any) Position {
	return c.pos[ptr]
}

// Pool returns the pool named name, or nil.
func (c *Config) Pool(name string) *Pool {
	for i := range c.Pools {
		if c.Pools[i].Name == name {
			return &c.Pools[i]
		}
	}
	return nil
}

// Listener returns the listener named name, or nil.
func (c *Config) Listener(name string) *Listener {
	for i := range c.Listeners {
		if c.Listeners[i].Name == name {
			return &c.Listeners[i]
		}
	}
	return nil
}

// AddrPort returns the member's address when the file gives an IP address
// and port; ok is false for a host name, which must be resolved first.
func (m *Member) AddrPort() (ap netip.AddrPort, ok bool) {
	ap, err := netip.ParseAddrPort(m.Addr)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// PoolNames returns the names of the pools l reads from, in the order the
// file names them, each once.
func (l *Listener) PoolNames() []string {
	var out []string
	add := func(n string) {
		for _, o := range out {
			if o == n {
				return
			}
		}
		if n != "" {
			out = append(out, n)
		}
	}
	switch {
	case l.Redirect != nil:
		add(l.Redirect.Pool)
	case l.DNS != nil:
		for _, s := range l.DNS.Services {
			add(s.Pool)
		}
		for _, u := range l.DNS.Updaters {
			add(u.Pool)
		}
	case l.HTTP != nil:
		add(l.HTTP.Pool)
		for _, r := range l.HTTP.Routes {
			add(r.Pool)
		}
	case l.TCP != nil:
		add(l.TCP.Pool)
	case l.IPLB != nil:
		add(l.IPLB.Pool)
	case l.L2LB != nil:
		for _, v := range l.L2LB.VIPs {
			add(v.Pool)
		}
	}
	return out
}
