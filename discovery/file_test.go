package discovery

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"

	"github.com/lbkit/lbkit/internal/testlog"
)

const fileWait = 10 * time.Second

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
}

// replaceFile writes text to a new file and renames it over path, as
// editors and deployment tools do.
func replaceFile(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, text)
	require.NoError(t, os.Rename(tmp, path))
}

func TestFileFollowsChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "web.yaml")
	writeFile(t, path, "- addr: 198.18.0.1:80\n  weight: 2\n  zone: a\n  meta: {url: \"http://one\"}\n- addr: 198.18.0.2:80\n")
	src, err := NewFile(FileConfig{Path: path, Debounce: 20 * time.Millisecond})
	require.NoError(t, err)
	pool := newPool(t, "web")
	var logs testlog.Buffer
	stop := runSyncer(t, &Syncer{Pool: pool, Sources: []Source{src}, Logger: logs.Logger()})
	defer stop()

	waitMembers(t, pool, fileWait, "198.18.0.1:80", "198.18.0.2:80")
	ep := pool.Endpoint(ap("198.18.0.1:80"))
	assert.Equal(t, uint32(2), ep.Backend().Weight)
	assert.Equal(t, "a", ep.Zone())
	assert.Equal(t, "http://one", ep.Meta("url"))

	// Rewritten in place.
	writeFile(t, path, "- addr: 198.18.0.2:80\n- addr: 198.18.0.3:80\n")
	waitMembers(t, pool, fileWait, "198.18.0.2:80", "198.18.0.3:80")

	// Replaced by a rename: the directory is watched, not the file.
	replaceFile(t, path, "members:\n  - addr: 198.18.0.4:80\n")
	waitMembers(t, pool, fileWait, "198.18.0.4:80")
	replaceFile(t, path, "- addr: 198.18.0.5:80\n")
	waitMembers(t, pool, fileWait, "198.18.0.5:80")

	// A broken file keeps the last good members; the error names the line.
	writeFile(t, path, "- addr: 198.18.0.6:80\n- addr: 198.18.0.7:80\n  wieght: 3\n")
	logs.WaitFor(t, `line 3: unknown field \"wieght\"`, fileWait)
	assert.Equal(t, []string{"198.18.0.5:80"}, members(pool))
	// Removed: the members stay too.
	require.NoError(t, os.Remove(path))
	logs.WaitFor(t, "no such file or directory", fileWait)
	assert.Equal(t, []string{"198.18.0.5:80"}, members(pool))
	// Written again, good: it is followed.
	replaceFile(t, path, "- addr: 198.18.0.8:80\n")
	waitMembers(t, pool, fileWait, "198.18.0.8:80")

	// An empty list removes every member.
	writeFile(t, path, "[]\n")
	waitMembers(t, pool, fileWait)
	assert.Contains(t, logs.String(), `pool=web source="file `+path+`"`)
}

// TestFileBrokenKeepsLast drives the source alone to see each report.
func TestFileBrokenKeepsLast(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "members.json")
	writeFile(t, path, `[{"addr": "198.18.0.1:80", "weight": 5}]`)
	src, err := NewFile(FileConfig{Path: path, Debounce: 10 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	sink := newRecSink(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Watch(ctx, sink) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	set := sink.nextSet(t, fileWait)
	assert.Equal(t, []balancer.Backend{{Addr: ap("198.18.0.1:80"), Weight: 5}}, set)

	writeFile(t, path, "[\n  {\"addr\": \"198.18.0.1:80\"},\n  {\"addr\": \"198.18.0.2:80\",}\n]\n")
	err = sink.nextErr(t, fileWait)
	assert.ErrorContains(t, err, "members.json: line 3: invalid character '}'")

	writeFile(t, path, "[\n  {\"addr\": \"198.18.0.1:80\"},\n  {\"addr\": \"web:http\"}\n]\n")
	err = sink.nextErr(t, fileWait)
	assert.ErrorContains(t, err, `line 3: discovery: member "web:http": port "http": expected 1 to 65535`)

	require.NoError(t, os.Remove(path))
	assert.ErrorIs(t, sink.nextErr(t, fileWait), os.ErrNotExist)

	writeFile(t, path, `[{"addr": "198.18.0.3:80"}]`)
	assert.Equal(t, []string{"198.18.0.3:80"}, addrsOf(sink.nextSet(t, fileWait)))
	select {
	case s := <-sink.sets:
		t.Fatalf("a set reported after a broken file: %v", s)
	default:
	}
}

func TestFileDirectoryMissing(t *testing.T) {
	src, err := NewFile(FileConfig{Path: filepath.Join(t.TempDir(), "nope", "m.yaml")})
	require.NoError(t, err)
	err = src.Watch(t.Context(), newRecSink(t.Context()))
	assert.ErrorContains(t, err, "discovery: file ")
}

func TestParseMembersFile(t *testing.T) {
	tests := []struct {
		name, text string
		json       bool
		want       []Member
		err        string
	}{
		{name: "yaml list", text: "- addr: 198.18.0.1:80\n  weight: 2\n- {addr: \"[2001:db8::1]:443\", zone: b, meta: {mac: \"02:00:00:00:00:01\"}}\n",
			want: []Member{{Addr: "198.18.0.1:80", Weight: 2}, {Addr: "[2001:db8::1]:443", Zone: "b", Meta: map[string]string{"mac": "02:00:00:00:00:01"}}}},
		{name: "yaml members key", text: "members:\n- addr: localhost:9101\n", want: []Member{{Addr: "localhost:9101"}}},
		{name: "yaml empty list", text: "[]\n", want: []Member{}},
		{name: "yaml empty file", text: "", err: "no members list"},
		{name: "yaml unknown field", text: "- addr: 198.18.0.1:80\n\n- addr: 198.18.0.2:80\n  wieght: 3\n", err: `line 4: unknown field "wieght"`},
		{name: "yaml bad weight", text: "- addr: 198.18.0.1:80\n  weight: -1\n", err: "line 2: cannot unmarshal"},
		{name: "yaml bad syntax", text: "- addr: 198.18.0.1:80\n  zone: [\n", err: "yaml: line 2"},
		{name: "yaml bad addr", text: "- addr: 198.18.0.1:80\n- addr: 198.18.0.1\n", err: `line 2: discovery: member "198.18.0.1"`},
		{name: "yaml not a list", text: "addr: 198.18.0.1:80\n", err: "line 1: want a list of members"},
		{name: "json list", json: true, text: `[{"addr":"198.18.0.1:80","weight":3,"zone":"a","meta":{"url":"http://x"}}]`,
			want: []Member{{Addr: "198.18.0.1:80", Weight: 3, Zone: "a", Meta: map[string]string{"url": "http://x"}}}},
		{name: "json members key", json: true, text: `{"members": [{"addr":"198.18.0.1:80"}]}`, want: []Member{{Addr: "198.18.0.1:80"}}},
		{name: "json empty", json: true, text: "[]", want: []Member{}},
		{name: "json unknown field", json: true, text: "[\n{\"addr\":\"198.18.0.1:80\"},\n\n{\"addr\":\"198.18.0.2:80\",\"wieght\":1}]", err: `line 4: json: unknown field "wieght"`},
		{name: "json truncated", json: true, text: "[\n{\"addr\":\"198.18.0.1:80\"", err: "line 2: unexpected EOF"},
		{name: "json not a list", json: true, text: `"x"`, err: "line 1: want a list of members"},
		{name: "json host name bad", json: true, text: "[{\"addr\":\"we b:80\"}]", err: "expected an IP address or a DNS name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMembersFile([]byte(tt.text), tt.json)
			if tt.err != "" {
				assert.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}
