package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.yaml.in/yaml/v3"
)

// DefaultDebounce is how long a File source waits after the last change
// to its file before reading it, when FileConfig.Debounce is zero.
const DefaultDebounce = 100 * time.Millisecond

// FileConfig configures a File source.
type FileConfig struct {
	// Path is the members file: a list of members (see Member) in JSON
	// when the name ends in ".json", in YAML otherwise, e.g.
	//
	//	- addr: 198.18.0.11:8080
	//	  weight: 2
	//	  zone: rack-1
	//	- addr: web-2.example.test:8080
	//	  meta: {url: "https://web-2.example.test"}
	//
	// A mapping with one key "members" holding the list is accepted too.
	// A file with no document is an error; to remove every member, write
	// an empty list ([]). Required.
	Path string `json:"path" yaml:"path"`
	// Debounce is how long the source waits after the last change to the
	// file's directory before it reads the file, so an editor's write in
	// several steps is read once. Zero means DefaultDebounce.
	Debounce time.Duration `json:"debounce,omitempty" yaml:"debounce,omitempty"`
	// Interval is how often the host names in the file are resolved
	// again. Zero means DefaultInterval.
	Interval time.Duration `json:"interval,omitempty" yaml:"interval,omitempty"`
	// Network is which addresses a host name gives: "ip", "ip4" or "ip6".
	// Empty means "ip".
	Network string `json:"network,omitempty" yaml:"network,omitempty"`
	// Resolver resolves host names. Nil means net.DefaultResolver.
	Resolver *net.Resolver `json:"-" yaml:"-"`
}

// File is a Source of members listed in a file, read again whenever it
// changes. It watches the file's directory, not the file, so an editor
// or a deployment tool that writes a new file and renames it over the
// old one (or swaps a symbolic link, as Kubernetes does with
// ConfigMaps) is followed. A file that does not parse keeps the last
// good members, and the error, with its line, goes to Sink.Fail.
// Create one with NewFile. Its Watch may run in one goroutine at a time.
type File struct {
	path     string
	json     bool
	debounce time.Duration
	interval time.Duration
	hosts    hostResolver
}

var _ Source = (*File)(nil)

// NewFile checks cfg and returns its source. The file need not exist
// yet; its directory must exist when Watch runs.
func NewFile(cfg FileConfig) (*File, error) {
	if cfg.Path == "" {
		return nil, errors.New("discovery: file: Path is required")
	}
	network, err := checkNetwork(cfg.Network)
	if err != nil {
		return nil, err
	}
	if cfg.Debounce < 0 || cfg.Interval < 0 {
		return nil, errors.New("discovery: file: negative debounce or interval")
	}
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("discovery: file %s: %w", cfg.Path, err)
	}
	f := &File{
		path:     path,
		json:     strings.EqualFold(filepath.Ext(path), ".json"),
		debounce: cfg.Debounce,
		interval: cfg.Interval,
		hosts:    hostResolver{resolver: cfg.Resolver, network: network},
	}
	if f.debounce == 0 {
		f.debounce = DefaultDebounce
	}
	if f.interval == 0 {
		f.interval = DefaultInterval
	}
	return f, nil
}

// String names the source in log lines.
func (f *File) String() string { return "file " + f.path }

// Watch reads the file, reports its members, and reads it again after
// every change in its directory (once the directory has been quiet for
// Debounce), reporting the members when the file's content changed. It
// also resolves the file's host names again every Interval. It returns
// nil when ctx ends, and an error when the directory cannot be watched
// or is removed.
func (f *File) Watch(ctx context.Context, sink Sink) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("discovery: file %s: %w", f.path, err)
	}
	defer w.Close()
	dir := filepath.Dir(f.path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("discovery: file %s: watch directory: %w", f.path, err)
	}
	tick := time.NewTicker(f.interval)
	defer tick.Stop()
	debounce := time.NewTimer(0)
	<-debounce.C // read at once below; the timer serves later changes

	var (
		read    bool   // the file was read at least once
		content []byte // what it held then
		targets []target
		good    bool // targets came from a file that parsed
	)
	report := func() {
		set, err := f.hosts.backends(ctx, targets)
		if ctx.Err() != nil {
			return
		}
		sink.Set(set)
		if err != nil {
			sink.Fail(fmt.Errorf("discovery: file %s: %w", f.path, err))
		}
	}
	load := func() {
		data, err := os.ReadFile(f.path)
		if err != nil {
			read, content = false, nil
			sink.Fail(fmt.Errorf("discovery: file %s: %w", f.path, err))
			return
		}
		if read && bytes.Equal(data, content) {
			return
		}
		read, content = true, data
		ms, err := parseMembersFile(data, f.json)
		if err == nil {
			var ts []target
			if ts, err = parseMembers(ms); err == nil {
				targets, good = ts, true
				report()
				return
			}
		}
		sink.Fail(fmt.Errorf("discovery: file %s: %w", f.path, err))
	}
	load()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("discovery: file %s: watcher closed", f.path)
			}
			if ev.Name == dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				return fmt.Errorf("discovery: file %s: directory %s removed", f.path, dir)
			}
			debounce.Reset(f.debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return fmt.Errorf("discovery: file %s: watcher closed", f.path)
			}
			// An overflowed event queue may have hidden a change.
			sink.Fail(fmt.Errorf("discovery: file %s: %w", f.path, err))
			read = false
			debounce.Reset(f.debounce)
		case <-debounce.C:
			load()
		case <-tick.C:
			if good && hasHosts(targets) {
				report()
			}
		}
	}
}

// memberFields are the keys a member may have in a file.
var memberFields = map[string]bool{"addr": true, "weight": true, "zone": true, "meta": true}

// parseMembersFile parses a members file, JSON or YAML. Its errors name
// the line.
func parseMembersFile(data []byte, isJSON bool) ([]Member, error) {
	if isJSON {
		return parseJSONMembers(data)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, errors.New("no members list (an empty file); write [] for none")
	}
	list := doc.Content[0]
	if list.Kind == yaml.MappingNode && len(list.Content) == 2 && list.Content[0].Value == "members" {
		list = list.Content[1]
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: want a list of members", list.Line)
	}
	ms := make([]Member, 0, len(list.Content))
	for _, item := range list.Content {
		if item.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("line %d: a member is a mapping with addr, weight, zone, meta", item.Line)
		}
		for i := 0; i+1 < len(item.Content); i += 2 {
			if k := item.Content[i]; !memberFields[k.Value] {
				return nil, fmt.Errorf("line %d: unknown field %q", k.Line, k.Value)
			}
		}
		var m Member
		if err := item.Decode(&m); err != nil {
			return nil, err // yaml's errors name the line
		}
		if _, err := parseMember(m); err != nil {
			return nil, fmt.Errorf("line %d: %w", item.Line, err)
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// parseJSONMembers parses a JSON members file: a list of members, or an
// object whose "members" holds it.
func parseJSONMembers(data []byte) ([]Member, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	lineErr := func(err error) error {
		var off int64 = dec.InputOffset()
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			off = se.Offset
		case errors.As(err, &te):
			off = te.Offset
		case errors.Is(err, io.EOF):
			return errors.New("no members list (an empty file); write [] for none")
		case errors.Is(err, io.ErrUnexpectedEOF):
			off = int64(len(data))
		}
		return fmt.Errorf("line %d: %w", lineAt(data, off), err)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, lineErr(err)
	}
	if tok == json.Delim('{') {
		key, err := dec.Token()
		if err != nil {
			return nil, lineErr(err)
		}
		if key != "members" {
			return nil, lineErr(fmt.Errorf("unknown field %v: want a list of members or {\"members\": [...]}", key))
		}
		if tok, err = dec.Token(); err != nil {
			return nil, lineErr(err)
		}
	}
	if tok != json.Delim('[') {
		return nil, lineErr(errors.New("want a list of members"))
	}
	var ms []Member
	for dec.More() {
		start := dec.InputOffset()
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, lineErr(err)
		}
		line := lineAt(data, start+int64(len(data[start:])-len(bytes.TrimLeft(data[start:], " \t\r\n,"))))
		var m Member
		md := json.NewDecoder(bytes.NewReader(raw))
		md.DisallowUnknownFields()
		if err := md.Decode(&m); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if _, err := parseMember(m); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		ms = append(ms, m)
	}
	if ms == nil {
		ms = []Member{}
	}
	return ms, nil
}

// lineAt returns the 1-based line of byte offset off in data.
func lineAt(data []byte, off int64) int {
	off = min(max(off, 0), int64(len(data)))
	return 1 + bytes.Count(data[:off], []byte{'\n'})
}
