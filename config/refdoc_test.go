package config_test

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/config/internal/refdoc"
)

// TestReferenceFresh checks that docs/config.md is what the schema's
// comments generate: run "go generate ./config" after changing them.
func TestReferenceFresh(t *testing.T) {
	want, err := refdoc.Markdown(".")
	require.NoError(t, err)
	got, err := os.ReadFile("../docs/config.md")
	require.NoError(t, err)
	require.Equal(t, string(want), string(got), "docs/config.md is stale: run go generate ./config")
}
