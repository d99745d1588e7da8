package config_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/config"
)

// diffBase is the configuration every TestDiff row edits.
const diffBase = `
shutdown_timeout: 10s
pools:
  - name: web
    policy: maglev
    members:
      - {addr: 127.0.0.1:9001}
      - {addr: 127.0.0.1:9002, weight: 2, zone: a, meta: {url: "http://a"}}
    health: {type: http, path: /hz}
  - name: api
    members:
      - {addr: 127.0.0.1:9101}
  - name: lab
    policy: maglev
    members:
      - {addr: 198.18.0.11:80}
    health: {type: none}
listeners:
  - {name: www, type: http, addr: 127.0.0.1:8080, pool: web}
  - {name: raw, type: tcp, addr: 127.0.0.1:8443, pool: api}
  - {name: nat, type: iplb, vip: 198.19.0.1, port: 80, pool: lab}
  - name: dsr
    type: l2lb
    interface: eth0
    vips:
      - {vip: 198.19.0.2, port: 80, pool: lab}
      - {vip: 198.19.0.2, port: 53, proto: udp, pool: lab}
`

func TestDiff(t *testing.T) {
	tests := []struct {
		name string
		edit func(s string) string
		want config.Changes
	}{
		{"nothing", func(s string) string { return s }, config.Changes{}},
		{"comments and layout only", func(s string) string {
			return "# a comment\n" + strings.Replace(s, "{addr: 127.0.0.1:9001}", "\n        addr: 127.0.0.1:9001 # same", 1)
		}, config.Changes{}},
		{"empty list equals absent, weight 1 equals 0", func(s string) string {
			return strings.Replace(s, "{addr: 127.0.0.1:9101}", "{addr: 127.0.0.1:9101, weight: 1, meta: {}}", 1)
		}, config.Changes{}},
		{"member added", func(s string) string {
			return strings.Replace(s, "      - {addr: 127.0.0.1:9001}\n", "      - {addr: 127.0.0.1:9001}\n      - {addr: 127.0.0.1:9003}\n", 1)
		}, config.Changes{PoolsChanged: []config.PoolChange{{Name: "web", Members: true, MembersAdded: []string{"127.0.0.1:9003"}}}}},
		{"member removed", func(s string) string {
			return strings.Replace(s, "      - {addr: 127.0.0.1:9001}\n", "", 1)
		}, config.Changes{PoolsChanged: []config.PoolChange{{Name: "web", Members: true, MembersRemoved: []string{"127.0.0.1:9001"}}}}},
		{"member weight, zone and meta", func(s string) string {
			return strings.Replace(s, `weight: 2, zone: a, meta: {url: "http://a"}`, `weight: 3, zone: a, meta: {url: "http://b"}`, 1)
		}, config.Changes{PoolsChanged: []config.PoolChange{{Name: "web", Members: true, MembersChanged: []string{"127.0.0.1:9002"}}}}},
		{"member order only", func(s string) string {
			return strings.Replace(s, "      - {addr: 127.0.0.1:9001}\n      - {addr: 127.0.0.1:9002, weight: 2, zone: a, meta: {url: \"http://a\"}}\n",
				"      - {addr: 127.0.0.1:9002, weight: 2, zone: a, meta: {url: \"http://a\"}}\n      - {addr: 127.0.0.1:9001}\n", 1)
		}, config.Changes{}},
		{"health template", func(s string) string {
			return strings.Replace(s, "path: /hz", "path: /healthz", 1)
		}, config.Changes{PoolsChanged: []config.PoolChange{{Name: "web", Health: true}}}},
		{"passive", func(s string) string {
			return strings.Replace(s, "  - name: api\n", "  - name: api\n    passive: {consecutive_failures: 3}\n", 1)
		}, config.Changes{PoolsChanged: []config.PoolChange{{Name: "api", Health: true}}}},
		{"policy and members", func(s string) string {
			s = strings.Replace(s, "policy: maglev\n    members:\n      - {addr: 127.0.0.1:9001}", "policy: ringhash\n    members:\n      - {addr: 127.0.0.1:9001}", 1)
			return strings.Replace(s, "      - {addr: 127.0.0.1:9001}\n", "", 1)
		}, config.Changes{PoolsChanged: []config.PoolChange{{Name: "web", Members: true, MembersRemoved: []string{"127.0.0.1:9001"}, Settings: true}}}},
		{"key", func(s string) string {
			return strings.Replace(s, "policy: maglev\n    members:\n      - {addr: 127.0.0.1:9001}", "policy: maglev\n    key: header:X-User\n    members:\n      - {addr: 127.0.0.1:9001}", 1)
		}, config.Changes{PoolsChanged: []config.PoolChange{{Name: "web", Key: true}}}},
		{"pool added and removed", func(s string) string {
			s = strings.Replace(s, "  - name: api\n    members:\n      - {addr: 127.0.0.1:9101}\n", "  - name: api2\n    members:\n      - {addr: 127.0.0.1:9101}\n", 1)
			return strings.Replace(s, "pool: api}", "pool: api2}", 1)
		}, config.Changes{PoolsAdded: []string{"api2"}, PoolsRemoved: []string{"api"}, ListenersChanged: []config.ListenerChange{{Name: "raw"}}}},
		{"listener port", func(s string) string {
			return strings.Replace(s, "127.0.0.1:8080", "127.0.0.1:8081", 1)
		}, config.Changes{ListenersChanged: []config.ListenerChange{{Name: "www", AddrChanged: true}}}},
		{"listener option only", func(s string) string {
			return strings.Replace(s, "pool: web}", "pool: web, max_tries: 1}", 1)
		}, config.Changes{ListenersChanged: []config.ListenerChange{{Name: "www"}}}},
		{"listener type", func(s string) string {
			return strings.Replace(s, "{name: raw, type: tcp,", "{name: raw, type: redirect,", 1)
		}, config.Changes{ListenersChanged: []config.ListenerChange{{Name: "raw", TypeChanged: true, AddrChanged: true}}}},
		{"listener added and removed", func(s string) string {
			return strings.Replace(s, "{name: raw,", "{name: raw2,", 1)
		}, config.Changes{ListenersAdded: []string{"raw2"}, ListenersRemoved: []string{"raw"}}},
		{"iplb mode keeps the vip", func(s string) string {
			return strings.Replace(s, "port: 80, pool: lab}\n  - name: dsr", "port: 80, pool: lab, mode: fullnat}\n  - name: dsr", 1)
		}, config.Changes{ListenersChanged: []config.ListenerChange{{Name: "nat"}}}},
		{"iplb vip", func(s string) string {
			return strings.Replace(s, "vip: 198.19.0.1,", "vip: 198.19.0.3,", 1)
		}, config.Changes{ListenersChanged: []config.ListenerChange{{Name: "nat", AddrChanged: true}}}},
		{"l2lb vips reordered", func(s string) string {
			return strings.Replace(s, "      - {vip: 198.19.0.2, port: 80, pool: lab}\n      - {vip: 198.19.0.2, port: 53, proto: udp, pool: lab}\n",
				"      - {vip: 198.19.0.2, port: 53, proto: udp, pool: lab}\n      - {vip: 198.19.0.2, port: 80, pool: lab}\n", 1)
		}, config.Changes{ListenersChanged: []config.ListenerChange{{Name: "dsr"}}}},
		{"l2lb interface", func(s string) string {
			return strings.Replace(s, "interface: eth0", "interface: eth1", 1)
		}, config.Changes{ListenersChanged: []config.ListenerChange{{Name: "dsr", AddrChanged: true}}}},
		{"top level", func(s string) string {
			return "admin: {addr: '127.0.0.1:9901'}\naccess_log: {path: stdout}\n" + strings.Replace(s, "shutdown_timeout: 10s", "shutdown_timeout: 5s", 1)
		}, config.Changes{Admin: true, AccessLog: true, ShutdownTimeout: true}},
	}
	old, err := config.Parse("old.yaml", []byte(diffBase))
	require.NoError(t, err)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			new, err := config.Parse("new.yaml", []byte(tt.edit(diffBase)))
			require.NoError(t, err)
			got := config.Diff(old, new)
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Diff (-want +got):\n%s", d)
			}
			assert.Equal(t, tt.want.Empty(), got.Empty())
		})
	}
}

func TestDiffMembersOnly(t *testing.T) {
	assert.True(t, config.PoolChange{Members: true}.MembersOnly())
	assert.False(t, config.PoolChange{Members: true, Health: true}.MembersOnly())
	assert.False(t, config.PoolChange{Members: true, Settings: true}.MembersOnly())
	assert.False(t, config.PoolChange{}.MembersOnly())
	assert.False(t, config.PoolChange{Members: true, Key: true}.MembersOnly())
}

func TestDiffFromNothing(t *testing.T) {
	c, err := config.Parse("c.yaml", []byte(diffBase))
	require.NoError(t, err)
	add := config.Diff(nil, c)
	assert.Equal(t, []string{"web", "api", "lab"}, add.PoolsAdded)
	assert.Equal(t, []string{"www", "raw", "nat", "dsr"}, add.ListenersAdded)
	rm := config.Diff(c, nil)
	assert.Equal(t, []string{"web", "api", "lab"}, rm.PoolsRemoved)
	assert.Equal(t, []string{"www", "raw", "nat", "dsr"}, rm.ListenersRemoved)
	assert.True(t, config.Diff(c, c).Empty())
}
