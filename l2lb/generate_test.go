package l2lb

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGeneratedFilesFresh regenerates the program with the go:generate
// line of gen.go into a temporary directory and requires the committed
// l2lb_bpfel.go and l2lb_bpfel.o to match, so a change to the C that was
// not regenerated fails here. It needs clang (of the version that
// generated the files: bpf2go with the same clang is byte-for-byte
// reproducible) and llvm-strip, and skips without them.
func TestGeneratedFilesFresh(t *testing.T) {
	if testing.Short() {
		t.Skip("l2lb: regenerating the program is slow; skipped in -short mode")
	}
	for _, tool := range []string{"clang", "llvm-strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("l2lb: %s not found; cannot check that the generated program is fresh", tool)
		}
	}
	// Other clang versions emit other (equally valid) bytes.
	if v, err := exec.Command("clang", "--version").Output(); err != nil || !bytes.Contains(v, []byte("clang version "+generatedWithClang+".")) {
		t.Skipf("l2lb: the program was generated with clang %s; this clang is %q", generatedWithClang, bytes.SplitN(v, []byte("\n"), 2)[0])
	}
	src, err := os.ReadFile("gen.go")
	require.NoError(t, err)
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			args = splitQuoted(rest)
		}
	}
	require.NotEmpty(t, args, "gen.go has no bpf2go line")
	dir := t.TempDir()
	goBin, err := exec.LookPath("go")
	require.NoError(t, err)
	cmd := exec.Command(goBin, append([]string{"tool", "bpf2go", "-output-dir", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=l2lb", "GOFILE=gen.go")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, f := range []string{"l2lb_bpfel.go", "l2lb_bpfel.o"} {
		want, err := os.ReadFile(filepath.Join(dir, f))
		require.NoError(t, err)
		got, err := os.ReadFile(f)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "%s is stale: run go generate ./l2lb and commit it", f)
	}
}

// generatedWithClang is the major version of the clang that generated the
// committed l2lb_bpfel.o (Debian's clang 14).
const generatedWithClang = "14"

// splitQuoted splits s at spaces, keeping double-quoted runs together
// (without the quotes), as go generate does.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, any := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, any = !quoted, true
		case r == ' ' && !quoted:
			if any || cur.Len() > 0 {
				out = append(out, cur.String())
			}
			cur.Reset()
			any = false
		default:
			cur.WriteRune(r)
		}
	}
	if any || cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
