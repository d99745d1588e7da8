package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/internal/etcdtest"
)

// TestClusterFlags: the cluster commands refuse what cannot work, before
// connecting anywhere.
func TestClusterFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"serve", "-etcd", "http://127.0.0.1:1", "-config", "x.yaml"}, 2, "-config and -etcd exclude each other"},
		{[]string{"serve", "-etcd", "http://127.0.0.1:1", "-node", ""}, 2, "-etcd needs -node NAME"},
		{[]string{"status"}, 2, "-etcd ENDPOINTS is required"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut strings.Builder
			code := run(t.Context(), tt.args, &out, &errOut)
			assert.Equal(t, tt.code, code)
			assert.Contains(t, errOut.String(), tt.msg)
		})
	}
}

// TestStatusNoCluster: lbkit status on a prefix with no configuration and
// no node says so.
func TestStatusNoCluster(t *testing.T) {
	endpoint := etcdtest.Start(t)
	var out, errOut strings.Builder
	code := run(t.Context(), []string{"status", "-etcd", endpoint, "-etcd-prefix", "/empty"}, &out, &errOut)
	require.Zero(t, code, errOut.String())
	assert.Equal(t, "configuration /empty/config: revision 0\n\nno live nodes\n", out.String())
}
