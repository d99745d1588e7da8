package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// buildLbkit builds the real binary into a temporary directory.
func buildLbkit(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "lbkit")
	gobin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command is needed to build lbkit")
	out, err := exec.Command(gobin, "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// runLbkit runs the binary and returns its exit code and output.
func runLbkit(t *testing.T, bin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), o.String(), e.String()
	}
	require.NoError(t, err)
	return 0, o.String(), e.String()
}

// TestValidateCommand runs `lbkit validate` from a real build against the
// shipped examples and the broken files of package config.
func TestValidateCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildLbkit(t)

	examples, err := filepath.Glob("../../examples/config/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, examples)
	for _, f := range examples {
		code, stdout, stderr := runLbkit(t, bin, "validate", "-config", f)
		assert.Equal(t, 0, code, "%s: %s", f, stderr)
		assert.Equal(t, f+": ok\n", stdout)
		assert.Empty(t, stderr)
	}

	broken := map[string]string{
		"syntax.yaml":             ":5: syntax error: ",
		"unknown_field.yaml":      `:5:9: unknown field "wieght" in a member`,
		"unknown_pool.yaml":       `:9:11: unknown pool "wbe"`,
		"bad_address.yaml":        `:5:15: addr: bad address "127.0.0.1"`,
		"duplicate_listener.yaml": `:10:11: duplicate listener "www"`,
		"bad_duration.yaml":       `:7:17: interval: bad duration "5"`,
		"bad_key.yaml":            ":4:10: key: ",
		"bad_policy.yaml":         `:3:13: policy: unknown policy "least-conn"`,
		"admin_no_token.yaml":     ":2:9: addr: admin endpoint on 0.0.0.0:9900 is not loopback-only",
		"negative_weight.yaml":    ":8:17: weight: -1 is out of range",
	}
	for name, want := range broken {
		f := filepath.Join("..", "..", "config", "testdata", "broken", name)
		code, stdout, stderr := runLbkit(t, bin, "validate", "-config", f)
		assert.Equal(t, 1, code, name)
		assert.Empty(t, stdout, name)
		assert.True(t, strings.HasPrefix(stderr, f+want), "%s: got %q, want prefix %q", name, stderr, f+want)
		assert.Equal(t, 1, strings.Count(stderr, "\n"), "%s: one error, one line: %q", name, stderr)
	}

	// Every problem of a file is printed, one a line.
	many := filepath.Join("..", "..", "config", "testdata", "broken", "many.yaml")
	code, _, stderr := runLbkit(t, bin, "validate", "-config", many)
	assert.Equal(t, 1, code)
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	require.Len(t, lines, 5, stderr)
	for _, l := range lines {
		assert.True(t, strings.HasPrefix(l, many+":"), l)
	}

	code, _, stderr = runLbkit(t, bin, "validate", "-config", filepath.Join(t.TempDir(), "missing.yaml"))
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "no such file")

	code, _, stderr = runLbkit(t, bin, "validate")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "usage: lbkit validate -config FILE")
}

// TestValidateStartsNothing checks that validating a file whose listener
// address is taken succeeds: validate checks, it does not bind.
func TestValidateStartsNothing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	f := filepath.Join(t.TempDir(), "lbkit.yaml")
	require.NoError(t, os.WriteFile(f, []byte("pools:\n  - name: p\n    members: [{addr: '127.0.0.1:1'}]\n"+
		"listeners:\n  - {name: l, type: tcp, addr: '"+ln.Addr().String()+"', pool: p}\n"), 0o600))
	var out, errb bytes.Buffer
	assert.Equal(t, 0, run(t.Context(), []string{"validate", "-config", f}, &out, &errb), errb.String())
	assert.Equal(t, f+": ok\n", out.String())
}
