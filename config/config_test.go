package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/config"
)

// TestExamplesValidate loads every file in examples/config: each must be
// valid as shipped.
func TestExamplesValidate(t *testing.T) {
	files, err := filepath.Glob("../examples/config/*.yaml")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 8)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := config.Load(f)
			require.NoError(t, err)
			assert.NotEmpty(t, c.Listeners)
		})
	}
}

// TestBroken checks that each broken file is rejected with an error at the
// line (and column, where YAML gives one) of the mistake, saying what is
// wrong.
func TestBroken(t *testing.T) {
	tests := []struct {
		file      string
		line, col int
		msg       string
	}{
		{"syntax.yaml", 5, 0, "syntax error"},
		{"unknown_field.yaml", 5, 9, `unknown field "wieght" in a member; expected one of addr, weight, zone, meta`},
		{"unknown_pool.yaml", 9, 11, `unknown pool "wbe"; declared pools: web`},
		{"bad_address.yaml", 5, 15, `addr: bad address "127.0.0.1"`},
		{"duplicate_listener.yaml", 10, 11, `duplicate listener "www": first declared at line 6`},
		{"bad_duration.yaml", 7, 17, `interval: bad duration "5"`},
		{"bad_key.yaml", 4, 10, `key: balancer: `},
		{"bad_policy.yaml", 3, 13, `unknown policy "least-conn"; expected one of roundrobin`},
		{"admin_no_token.yaml", 2, 9, "not loopback-only: set token_file"},
		{"negative_weight.yaml", 8, 17, "weight: -1 is out of range"},
		{"address_twice.yaml", 12, 11, `listener address used twice: 127.0.0.1:8080/tcp is also used by listener "www" (line 8)`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", "broken", tt.file)
			c, err := config.Load(path)
			require.Error(t, err)
			assert.Nil(t, c)
			var errs config.Errors
			require.True(t, errors.As(err, &errs), "%T", err)
			require.Len(t, errs, 1, "%v", err)
			e := errs[0]
			assert.Equal(t, config.Position{File: path, Line: tt.line, Column: tt.col}, e.Position, "%v", e)
			assert.Contains(t, e.Msg, tt.msg)
			want := fmt.Sprintf("%s:%d:%d: ", path, tt.line, tt.col)
			if tt.col == 0 {
				want = fmt.Sprintf("%s:%d: ", path, tt.line)
			}
			assert.True(t, strings.HasPrefix(e.Error(), want), "%q", e.Error())
		})
	}
}

// TestAllErrors checks that Parse reports every problem in a file, in file
// order, not just the first.
func TestAllErrors(t *testing.T) {
	path := filepath.Join("testdata", "broken", "many.yaml")
	_, err := config.Load(path)
	var errs config.Errors
	require.ErrorAs(t, err, &errs)
	var got []string
	for _, e := range errs {
		got = append(got, fmt.Sprintf("%d:%d", e.Line, e.Column))
	}
	assert.Equal(t, []string{"2:19", "6:17", "9:17", "13:11", "14:11"}, got, "%v", err)
	assert.Contains(t, errs[0].Msg, "shutdown_timeout: bad duration")
	assert.Contains(t, errs[1].Msg, "table_size: 1000 is not a prime")
	assert.Contains(t, errs[2].Msg, `weight: expected an integer, got "many"`)
	assert.Contains(t, errs[3].Msg, `bad address "127.0.0.1:80800"`)
	assert.Contains(t, errs[4].Msg, `unknown pool "nope"`)
	assert.Equal(t, strings.Count(err.Error(), "\n")+1, len(errs))
}

// parse parses a configuration given inline, its lines joined by
// newlines, with files resolved against dir.
func parse(t *testing.T, dir string, lines ...string) (*config.Config, error) {
	t.Helper()
	return config.Parse(filepath.Join(dir, "lbkit.yaml"), []byte(strings.Join(lines, "\n")+"\n"))
}

// requireErr asserts that err holds exactly one problem, at line:col, whose
// message contains msg.
func requireErr(t *testing.T, err error, line, col int, msg string) {
	t.Helper()
	var errs config.Errors
	require.ErrorAs(t, err, &errs)
	require.Len(t, errs, 1, "%v", err)
	assert.Equal(t, line, errs[0].Line, "%v", err)
	assert.Equal(t, col, errs[0].Column, "%v", err)
	assert.Contains(t, errs[0].Msg, msg)
}

const (
	poolWeb = "pools:\n  - name: web\n    members:\n      - addr: 127.0.0.1:9001"
)

// TestDecode covers the decoder's strictness, one mistake a row. Every
// file starts with poolWeb (4 lines), so the mistakes are on line 5 and
// later.
func TestDecode(t *testing.T) {
	tests := []struct {
		name      string
		text      string
		line, col int
		msg       string
	}{
		{"string for list", "listeners: www", 5, 12, "listeners: expected a list, got \"www\""},
		{"list for string", "listeners:\n  - name: [a]\n    type: tcp\n    addr: :1\n    pool: web", 6, 11, "name: expected a string, got a list"},
		{"duration without unit", "shutdown_timeout: 30", 5, 19, "bad duration \"30\""},
		{"negative duration", "shutdown_timeout: -1s", 5, 19, "negative duration"},
		{"bool", "listeners:\n  - {name: t, type: tcp, addr: ':1', pool: web, proxy_protocol: {accept: yes}}", 6, 74, "accept: expected true or false, got \"yes\""},
		{"float for int", "listeners:\n  - {name: t, type: tcp, addr: ':1', pool: web, max_conns: 1.5}", 6, 60, "max_conns: expected an integer, got \"1.5\""},
		{"int overflow", "listeners:\n  - {name: t, type: tcp, addr: ':1', pool: web, max_conns: 99999999999999999999}", 6, 60, "expected an integer"},
		{"nan", "  - name: x\n    panic_threshold: .nan", 6, 22, "expected a number"},
		{"field twice", "shutdown_timeout: 1s\nshutdown_timeout: 2s", 6, 1, "shutdown_timeout given twice"},
		{"top-level unknown", "listners: []", 5, 1, `unknown field "listners" in the top level`},
		{"option of another type", "listeners:\n  - name: t\n    type: tcp\n    addr: :1\n    pool: web\n    code: 302", 10, 5, `unknown field "code" in a tcp listener`},
		{"option before type", "listeners:\n  - name: t\n    pool: web", 6, 5, "a listener needs a type"},
		{"missing type", "listeners:\n  - name: t", 6, 5, "a listener needs a type"},
		{"bad enum", "access_log: {path: stdout, format: xml}", 5, 36, `unknown log format "xml"; expected one of json, combined`},
		{"mapping for scalar", "admin:\n  addr: {host: x}", 6, 9, "addr: expected a string, got a mapping"},
		{"self alias", "x: &a [*a]", 5, 1, `unknown field "x"`},
		{"meta not strings", "  - name: m\n    members:\n      - addr: 127.0.0.1:1\n        meta: {url: [x]}", 8, 21, "url: expected a string, got a list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, t.TempDir(), poolWeb, tt.text)
			requireErr(t, err, tt.line, tt.col, tt.msg)
		})
	}
}

func TestAliasesAndMerge(t *testing.T) {
	c, err := parse(t, t.TempDir(),
		"pools:",
		"  - name: a",
		"    health: &h {type: http, path: /hz, interval: 2s}",
		"    passive: &p",
		"      consecutive_failures: 3",
		"      base_ejection: 10s",
		"  - name: b",
		"    health: *h",
		"    passive:",
		"      <<: *p",
		"      base_ejection: 20s",
	)
	require.NoError(t, err)
	require.Len(t, c.Pools, 2)
	assert.Equal(t, c.Pools[0].Health, c.Pools[1].Health)
	assert.Equal(t, "/hz", c.Pools[1].Health.Path)
	assert.Equal(t, 3, c.Pools[1].Passive.ConsecutiveFailures)
	assert.Equal(t, 20*time.Second, c.Pools[1].Passive.BaseEjection, "explicit keys win over merged ones")
	assert.Equal(t, 10*time.Second, c.Pools[0].Passive.BaseEjection)
}

// TestAliasBomb checks that a "billion laughs" file is refused quickly
// instead of expanding exponentially.
func TestAliasBomb(t *testing.T) {
	lines := []string{"pools:", "  - &m0 {name: x}"}
	for i := 1; i < 60; i++ {
		lines = append(lines, fmt.Sprintf("  - &m%d {<<: [*m%d, *m%d]}", i, i-1, i-1))
	}
	start := time.Now()
	_, err := parse(t, t.TempDir(), lines...)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "file too large")
	assert.Less(t, time.Since(start), 10*time.Second)
}

func TestDefaults(t *testing.T) {
	c, err := parse(t, t.TempDir(),
		"pools:",
		"  - name: web",
		"    members: [{addr: '127.0.0.1:9001'}]",
		"listeners:",
		"  - {name: www, type: http, addr: '127.0.0.1:8080', pool: web}",
	)
	require.NoError(t, err)
	assert.Equal(t, config.DefaultAdminAddr, c.Admin.Addr)
	assert.Equal(t, config.DefaultShutdownTimeout, c.ShutdownTimeout)
	assert.Equal(t, config.LogJSON, c.AccessLog.Format)
	assert.Empty(t, c.AccessLog.Path, "access log off by default")
	assert.Equal(t, config.PolicyRoundRobin, c.Pools[0].Policy)
	assert.Equal(t, config.ProbeTCP, c.Pools[0].Health.Type)
	l := c.Listeners[0]
	require.NotNil(t, l.HTTP)
	assert.Nil(t, l.TCP)
	assert.Equal(t, "web", l.HTTP.Pool)
	assert.Equal(t, []string{"web"}, l.PoolNames())
	assert.Same(t, &c.Pools[0], c.Pool("web"))
	assert.Same(t, &c.Listeners[0], c.Listener("www"))
	assert.Nil(t, c.Pool("nope"))
	assert.Equal(t, 5, c.Position(&c.Listeners[0]).Line)
	assert.Equal(t, config.Position{File: c.File(), Line: 3, Column: 22}, c.Position(&c.Pools[0].Members[0].Addr))
	assert.Equal(t, balancer.Key{}, c.Pools[0].Key)
}

func TestKeyParsed(t *testing.T) {
	c, err := parse(t, t.TempDir(), "pools:\n  - {name: web, policy: ringhash, key: 'client/24,56', load_factor: 1.25}")
	require.NoError(t, err)
	assert.Equal(t, balancer.Key{Source: balancer.KeyClient, Bits4: 24, Bits6: 56}, c.Pools[0].Key)
}

// TestValidate covers the semantic checks, one mistake a row. Every file
// starts with poolWeb (4 lines).
func TestValidate(t *testing.T) {
	tests := []struct {
		name      string
		text      string
		line, col int
		msg       string
	}{
		{"option of another policy", "  - {name: b, policy: roundrobin, table_size: 65537}", 5, 47, "table_size has no effect with policy roundrobin"},
		{"key without hash policy", "  - {name: b, key: client}", 5, 20, "key has no effect with policy roundrobin"},
		{"table not prime", "  - {name: b, policy: maglev, table_size: 65536}", 5, 43, "not a prime"},
		{"load factor below 1", "  - {name: b, policy: ringhash, load_factor: 0.5}", 5, 46, "below 1"},
		{"panic threshold", "  - {name: b, panic_threshold: 50}", 5, 32, "not a fraction"},
		{"duplicate pool", "  - name: web", 5, 11, `duplicate pool "web": first declared at line 2`},
		{"bad pool name", "  - name: 'we b'", 5, 11, "expected letters, digits"},
		{"pool without name", "  - policy: random", 5, 5, "a pool needs a name"},
		{"duplicate member", "      - addr: 127.0.0.1:9001", 5, 15, "duplicate member 127.0.0.1:9001"},
		{"member port 0", "      - addr: 127.0.0.1:0", 5, 15, "port 0"},
		{"member host name ok, bad port", "      - addr: db.example.test:http", 5, 15, `port "http"`},
		{"weight too big", "      - {addr: '127.0.0.1:9002', weight: 4294967296}", 5, 42, "out of range"},
		{"meta url", "      - {addr: '127.0.0.1:9002', meta: {url: 'ftp://x'}}", 5, 40, "expected an absolute http or https URL"},
		{"meta mac", "      - {addr: '127.0.0.1:9002', meta: {mac: 'zz'}}", 5, 40, "expected an Ethernet address"},
		{"probe option of another type", "    health: {type: tcp, path: /x}", 5, 31, "path has no effect with probe type tcp"},
		{"dns probe without query", "    health: {type: dns}", 5, 13, "a dns probe needs a query"},
		{"status range", "    health: {type: http, status: 400-200}", 5, 34, "expected a status or a range"},
		{"failure rate", "    passive: {failure_rate: 2}", 5, 29, "not a fraction"},
		{"max ejection below base", "    passive: {base_ejection: 1m, max_ejection: 10s}", 5, 48, "shorter than base_ejection"},
		{"listener without addr", "listeners:\n  - {name: a, type: http, pool: web}", 6, 5, "an http listener needs an addr"},
		{"bad listen host", "listeners:\n  - {name: a, type: http, addr: 'example.com:80', pool: web}", 6, 33, `host "example.com": expected an IP address`},
		{"iplb with addr", "listeners:\n  - {name: a, type: iplb, addr: ':80', vip: 198.19.0.1, port: 80, pool: web}", 6, 33, "iplb listeners take vip and port, not addr"},
		{"iplb family", "listeners:\n  - {name: a, type: iplb, vip: '2001:db8::1', port: 80, pool: web}", 6, 63, "not of the vip's address family"},
		{"iplb snat without fullnat", "listeners:\n  - {name: a, type: iplb, vip: 198.19.0.1, port: 80, pool: web, snat: 198.18.0.1}", 6, 71, "snat has no effect without mode: fullnat"},
		{"iplb port", "listeners:\n  - {name: a, type: iplb, vip: 198.19.0.1, port: 0, pool: web}", 6, 50, "port: 0: expected 1 to 65535"},
		{"l2lb without vips", "listeners:\n  - {name: a, type: l2lb, interface: eth0}", 6, 5, "needs at least one vip"},
		{"l2lb same vip twice", "listeners:\n  - name: a\n    type: l2lb\n    interface: eth0\n    vips:\n      - {vip: 198.19.0.1, port: 80, pool: web}\n      - {vip: 198.19.0.1, port: 80, pool: web}", 11, 15, "listener address used twice: 198.19.0.1:80/tcp"},
		{"l2lb udp and tcp differ", "  - {name: u, health: {type: none}}\nlisteners:\n  - name: a\n    type: l2lb\n    interface: eth0\n    vips:\n      - {vip: 198.19.0.1, port: 53, pool: web}\n      - {vip: 198.19.0.1, port: 53, pool: u, proto: udp}\n      - {vip: 198.19.0.1, port: 54, pool: nope, proto: udp}", 13, 43, `unknown pool "nope"`},
		{"iplb host name member", "      - addr: web1.example.test:80\nlisteners:\n  - {name: a, type: iplb, vip: 198.19.0.1, port: 80, pool: web}", 7, 60, `member web1.example.test:80 is a host name; a kernel data plane needs IP addresses`},
		{"udp vip with default health", "listeners:\n  - {name: a, type: iplb, vip: 198.19.0.1, port: 53, proto: udp, pool: web}", 6, 72, "serves a udp service but has the default tcp health check"},
		{"dns host name member", "      - addr: web1.example.test:80\nlisteners:\n  - {name: d, type: dns, addr: ':53', zones: [{origin: t., records: \"@ 1 IN SOA a b 1 1 1 1 1\\n@ 1 IN NS a\\n\"}], services: [{name: w.t., pool: web}]}", 7, 144, "a dns service needs IP addresses"},
		{"zone text in quotes", "listeners:\n  - {name: d, type: dns, addr: ':53', zones: [{origin: t., records: \"@ 1 IN SOA a b 1 1 1 1 1\\n@ 1 IN NS a\\nw 1 IN A x\\n\"}]}", 6, 69, `records: line 3:10: bad A A: "x"`},
		{"redirect code", "listeners:\n  - {name: a, type: redirect, addr: ':80', pool: web, code: 200}", 6, 61, "code: 200: expected 301, 302"},
		{"redirect fallback", "listeners:\n  - {name: a, type: redirect, addr: ':80', pool: web, fallback_url: /x}", 6, 69, "fallback_url"},
		{"trusted proxies", "listeners:\n  - {name: a, type: http, addr: ':80', pool: web, trusted_proxies: [10.0.0.0/33]}", 6, 69, "trusted_proxies: \"10.0.0.0/33\""},
		{"http without pool", "listeners:\n  - {name: a, type: http, addr: ':80'}", 6, 5, "needs a pool, routes, or both"},
		{"duplicate route", "listeners:\n  - name: a\n    type: http\n    addr: ':80'\n    routes:\n      - {path_prefix: /a, pool: web}\n      - {path_prefix: /a, pool: web}", 11, 9, "duplicate route"},
		{"route prefix", "listeners:\n  - name: a\n    type: http\n    addr: ':80'\n    routes:\n      - {path_prefix: a, pool: web}", 10, 23, "must start with /"},
		{"queue without limit", "listeners:\n  - {name: a, type: http, addr: ':80', pool: web, max_queue: 10}", 6, 62, "max_queue has no effect without max_conns"},
		{"cookie key missing", "listeners:\n  - {name: a, type: http, addr: ':80', pool: web, sticky: {key_file: nokey}}", 6, 70, "key_file: cannot read"},
		{"tls missing key", "listeners:\n  - {name: a, type: http, addr: ':80', pool: web, tls: {cert_file: c.pem}}", 6, 56, "tls needs cert_file and key_file"},
		{"dns needs zones", "listeners:\n  - {name: a, type: dns, addr: ':53'}", 6, 5, "needs zones to serve, updaters to run"},
		{"dns same port as http on udp and tcp", "listeners:\n  - {name: a, type: http, addr: '127.0.0.1:53', pool: web}\n  - name: d\n    type: dns\n    addr: '127.0.0.1:53'\n    zones: [{origin: t., records: \"@ 1 IN SOA a b 1 1 1 1 1\\n@ 1 IN NS a\\n\"}]", 9, 11, "listener address used twice: 127.0.0.1:53/tcp"},
		{"wildcard socket and vip do not clash", "listeners:\n  - {name: a, type: http, addr: ':80', pool: web}\n  - {name: b, type: iplb, vip: 198.19.0.1, port: 80, pool: nope}", 7, 60, `unknown pool "nope"`},
		{"socket on the vip clashes", "listeners:\n  - {name: a, type: http, addr: '198.19.0.1:80', pool: web}\n  - {name: b, type: iplb, vip: 198.19.0.1, port: 80, pool: web}", 7, 32, "listener address used twice: 198.19.0.1:80/tcp"},
		{"iplb and l2lb clash", "listeners:\n  - {name: a, type: l2lb, interface: eth0, vips: [{vip: 198.19.0.1, port: 80, pool: web}]}\n  - {name: b, type: iplb, vip: 198.19.0.1, port: 80, pool: web}", 7, 32, "listener address used twice"},
		{"unspecified vip", "listeners:\n  - {name: b, type: iplb, vip: 0.0.0.0, port: 80, pool: web}", 6, 32, "cannot be a virtual address"},
		{"tcp and udp do not clash", "  - {name: u, health: {type: none}}\nlisteners:\n  - {name: a, type: iplb, vip: 198.19.0.1, port: 53, proto: udp, pool: u}\n  - {name: b, type: tcp, addr: '198.19.0.1:53', pool: nope}", 8, 55, `unknown pool "nope"`},
		{"admin clash", "listeners:\n  - {name: a, type: http, addr: '127.0.0.1:9900', pool: web}", 6, 33, "is also used by the admin endpoint"},
		{"admin empty host", "admin: {addr: ':9900'}", 5, 15, "not loopback-only"},
		{"admin token unreadable", "admin: {addr: ':9900', token_file: missing}", 5, 36, "token_file: cannot read"},
		{"access log dir", "access_log: {path: /nonexistent/dir/access.log}", 5, 20, "directory /nonexistent/dir does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, t.TempDir(), poolWeb, tt.text)
			requireErr(t, err, tt.line, tt.col, tt.msg)
		})
	}
}

// TestLoopbackDefaults checks that a file with no admin section, or with
// loopback addresses, needs no token.
func TestLoopbackDefaults(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1:9900", "localhost:9900", "[::1]:9900", "127.0.0.2:0"} {
		t.Run(addr, func(t *testing.T) {
			text := poolWeb
			if addr != "" {
				text = "admin: {addr: '" + addr + "'}\n" + text
			}
			c, err := parse(t, t.TempDir(), text)
			require.NoError(t, err)
			assert.Empty(t, c.Admin.Token)
		})
	}
}

// TestFiles checks that the files a configuration names are read, relative
// to its directory.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
	}
	write("token", "  s3cret\n")
	write("cookie.key", "0123456789abcdef")
	write("short.key", "short")
	write("tsig.secret", "c2VjcmV0LXNlY3JldA==\n")
	write("zone.txt", "@ 60 IN SOA ns1 host 1 2 3 4 5\n@ 60 IN NS ns1\nns1 60 IN A 127.0.0.53\n")
	c, err := parse(t, dir,
		"admin: {addr: '0.0.0.0:9900', token_file: token}",
		poolWeb,
		"listeners:",
		"  - {name: h, type: http, addr: ':8080', pool: web, sticky: {key_file: cookie.key}}",
		"  - name: d",
		"    type: dns",
		"    addr: ':5353'",
		"    zones: [{origin: example.test, file: zone.txt}]",
		"    services: [{name: www.example.test, pool: web, update_port: 80}]",
		"    update_keys: [{name: k, secret_file: tsig.secret}]",
	)
	require.NoError(t, err)
	assert.Equal(t, "s3cret", c.Admin.Token)
	assert.Equal(t, []byte("0123456789abcdef"), c.Listeners[0].HTTP.Sticky.Key)
	assert.Equal(t, "c2VjcmV0LXNlY3JldA==", c.Listeners[1].DNS.UpdateKeys[0].Secret)
	assert.Contains(t, c.Listeners[1].DNS.Zones[0].Records, "ns1 60 IN A")

	_, err = parse(t, dir, poolWeb, "listeners:", "  - {name: h, type: http, addr: ':8080', pool: web, sticky: {key_file: short.key}}")
	requireErr(t, err, 6, 72, "holds 5 bytes; a cookie key needs at least 16")
	_, err = parse(t, dir, poolWeb, "listeners:", "  - {name: h, type: http, addr: ':8080', pool: web, sticky: {key_file: /dev/zero}}")
	requireErr(t, err, 6, 72, "not a regular file")
}

// TestDNSZones covers the zone-data checks.
func TestDNSZones(t *testing.T) {
	dnsWith := func(records, service string) string {
		return "listeners:\n  - name: d\n    type: dns\n    addr: ':5353'\n    zones:\n      - origin: example.test.\n        records: |\n" +
			indent(records, "          ") + "\n    services: [" + service + "]"
	}
	good := "@ 60 IN SOA ns1 host 1 2 3 4 5\n@ 60 IN NS ns1\nns1 60 IN A 127.0.0.53"
	tests := []struct {
		name, records, service string
		line, col              int
		msg                    string
	}{
		{"two SOA", good + "\n@ 60 IN SOA ns2 host 1 2 3 4 5", "", 11, 18, "exactly one SOA record, has 2"},
		{"no NS", "@ 60 IN SOA ns1 host 1 2 3 4 5", "", 11, 18, "needs NS records at its apex"},
		{"outside", good + "\nwww.example.org. 60 IN A 127.0.0.1", "", 11, 18, "outside zone example.test."},
		{"delegation", good + "\nsub 60 IN NS ns.sub", "", 11, 18, "delegations are not supported"},
		{"bad text", good + "\nwww 60 IN A 300.1.1.1", "", 15, 23, `records: bad A A: "300.1.1.1"`},
		{"bad type on its line", "@ 60 IN SOA ns1 host 1 2 3 4 5\nwww 60 IN BOGUS x\n@ 60 IN NS ns1", "", 13, 21, `records: unknown RR type: "BOGUS"`},
		{"service outside zones", good, "{name: www.example.org., pool: web}", 15, 23, "in none of the listener's zones"},
		{"service with records", good + "\nwww 60 IN A 127.0.0.1", "{name: www.example.test., pool: web}", 16, 23, "also has A, AAAA, SRV or CNAME records"},
		{"update port without keys", good, "{name: www.example.test., pool: web, update_port: 80}", 15, 66, "update_port needs update_keys"},
		{"zones without nearest", good, "{name: www.example.test., pool: web, zones: [{prefix: 10.0.0.0/8, zone: a}]}", 15, 60, "zones have no effect without policy: nearest"},
		{"ttl fraction", good, "{name: www.example.test., pool: web, ttl: 1500ms}", 15, 58, "not a whole number of seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, t.TempDir(), poolWeb, dnsWith(tt.records, tt.service))
			requireErr(t, err, tt.line, tt.col, tt.msg)
		})
	}
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

func TestDocumentShape(t *testing.T) {
	tests := []struct {
		name, text string
		line, col  int
		msg        string
	}{
		{"empty", "", 1, 1, "empty file"},
		{"comment only", "# nothing\n", 1, 1, "empty file"},
		{"list", "- a\n", 1, 1, "expected a mapping with pools and listeners, got a list"},
		{"two documents", "pools: []\n---\npools: []\n", 2, 1, "a second YAML document"},
		{"tab", "pools:\n\t- name: x\n", 2, 0, "syntax error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse("f.yaml", []byte(tt.text))
			requireErr(t, err, tt.line, tt.col, tt.msg)
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := config.Load(filepath.Join(t.TempDir(), "nope.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
	assert.True(t, strings.HasPrefix(err.Error(), "config: "))
}

func TestParsePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3":      "10.1.2.3/32",
		"10.1.2.3/8":    "10.0.0.0/8",
		"2001:db8::1":   "2001:db8::1/128",
		"2001:db8::/32": "2001:db8::/32",
	} {
		p, err := config.ParsePrefix(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, p.String())
	}
	for _, in := range []string{"", "10.0.0.0/33", "example.test", "10.0.0.1/"} {
		_, err := config.ParsePrefix(in)
		assert.Error(t, err, in)
	}
}

func TestMemberAddrPort(t *testing.T) {
	ap, ok := (&config.Member{Addr: "[::ffff:127.0.0.1]:80"}).AddrPort()
	assert.True(t, ok)
	assert.Equal(t, "127.0.0.1:80", ap.String())
	_, ok = (&config.Member{Addr: "db.example.test:5432"}).AddrPort()
	assert.False(t, ok)
}

func TestPath(t *testing.T) {
	c, err := config.Parse(filepath.Join("etc", "lbkit", "lbkit.yaml"), []byte(poolWeb))
	require.NoError(t, err)
	assert.Equal(t, filepath.Join("etc", "lbkit", "logs", "access.log"), c.Path("logs/access.log"))
	assert.Equal(t, "/var/log/access.log", c.Path("/var/log/access.log"))
	assert.Equal(t, "", c.Path(""))
}
