package dnslb

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
)

// daemon is an external DNS server the test started (knotd, nsd,
// unbound), stopped by PID when the test ends.
type daemon struct {
	t      testing.TB
	name   string
	dir    string
	addr   string // 127.0.0.1:port it serves on
	cmd    *exec.Cmd
	exited chan struct{}
}

// sbinPath returns the path of an installed server binary, skipping the
// test when it is absent outside CI and failing it in CI.
func sbinPath(t testing.TB, name, pkg string) string {
	t.Helper()
	if bin, err := exec.LookPath(name); err == nil {
		return bin
	}
	if _, err := os.Stat("/usr/sbin/" + name); err == nil {
		return "/usr/sbin/" + name
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (install Debian package %s)", name, pkg)
	}
	t.Skipf("%s not found (install Debian package %s to run this test)", name, pkg)
	return ""
}

// startDaemon runs bin with args in dir (its log in dir/name.log) and
// stops it by PID when the test ends.
func startDaemon(t testing.TB, name, dir, addr, bin string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, name: name, dir: dir, addr: addr}
	logf, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer logf.Close()
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	require.NoError(t, d.cmd.Start())
	d.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(d.cmd, d.exited)
	t.Cleanup(d.stop)
	return d
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, d.name+".log"))
	return string(b)
}

// stop kills the process this test started, by PID, and waits for it.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.exited:
	default:
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// query asks the daemon over UDP; it returns nil when it does not answer.
func (d *daemon) query(name string, qtype uint16, opts ...func(*dns.Msg)) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	for _, o := range opts {
		o(m)
	}
	c := &dns.Client{Net: "udp", Timeout: 500 * time.Millisecond, UDPSize: 4096}
	r, _, err := c.Exchange(m, d.addr)
	if err != nil {
		return nil
	}
	return r
}

// waitFor polls the daemon (an external process: there is nothing to
// wait on but its answers) every few milliseconds until cond holds, and
// returns how long that took. It fails the test after timeout or when
// the daemon exits.
func (d *daemon) waitFor(timeout time.Duration, what string, cond func() bool) time.Duration {
	d.t.Helper()
	start := time.Now()
	for !cond() {
		select {
		case <-d.exited:
			d.t.Fatalf("%s exited:\n%s", d.name, d.log())
		default:
		}
		if time.Since(start) > timeout {
			d.t.Fatalf("%s: %s: not after %v:\n%s", d.name, what, timeout, d.log())
		}
		time.Sleep(2 * time.Millisecond) // polling an external process
	}
	return time.Since(start)
}

const xfrKeySecret = "eGZyLWtleS1mb3ItbGJraXQtdGVzdHMtb25seSE="

// startKnotSecondary starts knotd as a secondary of primary for origin,
// transferring with TSIG key "xfr." and accepting NOTIFY from loopback.
func startKnotSecondary(t testing.TB, origin, primary string, port int) *daemon {
	t.Helper()
	bin := knotdPath(t)
	dir := t.TempDir()
	host, pport, _ := net.SplitHostPort(primary)
	conf := fmt.Sprintf(`server:
    rundir: "%[1]s"
    listen: 127.0.0.1@%[2]d
%[7]s    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "%[1]s"
log:
  - target: stderr
    any: info
key:
  - id: xfr.
    algorithm: hmac-sha256
    secret: %[3]s
remote:
  - id: primary
    address: %[4]s@%[5]s
    key: xfr.
acl:
  - id: notify
    address: 127.0.0.0/8
    key: xfr.
    action: notify
template:
  - id: default
    storage: "%[1]s"
    zonefile-sync: -1
    zonefile-load: none
zone:
  - domain: %[6]s
    master: primary
    acl: notify
`, dir, port, xfrKeySecret, host, pport, origin, knotUser())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "knot.conf"), []byte(conf), 0o600))
	return startDaemon(t, "knotd", dir, fmt.Sprintf("127.0.0.1:%d", port), bin, "-c", filepath.Join(dir, "knot.conf"))
}

// startNSDSecondary starts nsd as a secondary of primary for origin, as
// startKnotSecondary does knotd.
func startNSDSecondary(t testing.TB, origin, primary string, port int) *daemon {
	t.Helper()
	bin := sbinPath(t, "nsd", "nsd")
	dir := t.TempDir()
	host, pport, _ := net.SplitHostPort(primary)
	conf := fmt.Sprintf(`server:
    ip-address: 127.0.0.1
    port: %[2]d
    username: ""
    chroot: ""
    zonesdir: "%[1]s"
    database: ""
    pidfile: "%[1]s/nsd.pid"
    xfrdfile: "%[1]s/xfrd.state"
    zonelistfile: "%[1]s/zone.list"
    xfrdir: "%[1]s"
    server-count: 1
    verbosity: 2
    rrl-ratelimit: 0
    xfrd-reload-timeout: 0
remote-control:
    control-enable: no
key:
    name: xfr.
    algorithm: hmac-sha256
    secret: "%[3]s"
zone:
    name: %[6]s
    zonefile: "%[1]s/secondary.zone"
    request-xfr: %[4]s@%[5]s xfr.
    allow-notify: 127.0.0.0/8 xfr.
`, dir, port, xfrKeySecret, host, pport, origin)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nsd.conf"), []byte(conf), 0o600))
	return startDaemon(t, "nsd", dir, fmt.Sprintf("127.0.0.1:%d", port), bin, "-d", "-c", filepath.Join(dir, "nsd.conf"))
}

// TestSecondariesFollowHealth runs a real Knot and a real NSD as
// secondaries of dnslb (AXFR to start, TSIG-signed, NOTIFY on change,
// IXFR after): a backend marked unhealthy leaves both secondaries'
// answers, and comes back when healthy again. It logs how long each
// secondary took from the health change to its changed answer.
func TestSecondariesFollowHealth(t *testing.T) {
	knotdPath(t)
	sbinPath(t, "nsd", "nsd")
	pool := newPool(t, nil, be("198.18.0.1:80"), be("198.18.0.2:80"), be("198.18.0.3:80"), be("[2001:db8::1]:80"))
	kport, nport := freePort(t), freePort(t)
	key := TSIGKey{Name: "xfr.", Secret: xfrKeySecret}
	srv, addr := startServer(t, Config{
		Services:      []Service{{Name: "svc.example.test.", Pool: pool}},
		TransferPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		TransferKeys:  []TSIGKey{key},
		Notify: []netip.AddrPort{
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(kport)),
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(nport)),
		},
		NotifyDelay: 20 * time.Millisecond,
		Logger:      quiet,
	})
	secondaries := []*daemon{
		startKnotSecondary(t, "example.test.", addr, kport),
		startNSDSecondary(t, "example.test.", addr, nport),
	}
	answers := func(d *daemon, qtype uint16, want ...string) func() bool {
		return func() bool {
			r := d.query("svc.example.test.", qtype)
			return r != nil && r.Rcode == dns.RcodeSuccess && r.Authoritative && slices.Equal(sorted(addrs(r)), want)
		}
	}
	for _, d := range secondaries {
		d.waitFor(30*time.Second, "first transfer", answers(d, dns.TypeA, "198.18.0.1", "198.18.0.2", "198.18.0.3"))
		require.True(t, answers(d, dns.TypeAAAA, "2001:db8::1")())
		r := d.query("txt.example.test.", dns.TypeTXT)
		require.NotNil(t, r)
		require.Len(t, r.Answer, 1, "static zone data is transferred")
	}

	steps := []struct {
		backend string
		healthy bool
		want    []string
	}{
		{"198.18.0.2:80", false, []string{"198.18.0.1", "198.18.0.3"}},
		{"198.18.0.2:80", true, []string{"198.18.0.1", "198.18.0.2", "198.18.0.3"}},
		{"198.18.0.1:80", false, []string{"198.18.0.2", "198.18.0.3"}},
		{"198.18.0.3:80", false, []string{"198.18.0.2"}},
		{"198.18.0.1:80", true, []string{"198.18.0.1", "198.18.0.2"}},
	}
	for _, st := range steps {
		start := time.Now()
		require.True(t, pool.SetHealthy(netip.MustParseAddrPort(st.backend), st.healthy))
		// Poll both in turn, so each one's time is measured alone.
		took := make([]time.Duration, len(secondaries))
		secondaries[0].waitFor(20*time.Second, fmt.Sprintf("healthy=%v", st.healthy), func() bool {
			for i, d := range secondaries {
				if took[i] == 0 && answers(d, dns.TypeA, st.want...)() {
					took[i] = time.Since(start)
				}
			}
			return !slices.Contains(took, 0)
		})
		for i, d := range secondaries {
			t.Logf("%s answers %v %v after %s healthy=%v (NotifyDelay 20ms)", d.name, st.want, took[i].Round(time.Millisecond), st.backend, st.healthy)
		}
	}
	serial := srv.xfr.current("example.test.").Serial
	for _, d := range secondaries {
		r := d.query("example.test.", dns.TypeSOA)
		require.NotNil(t, r)
		require.Len(t, r.Answer, 1)
		require.Equal(t, serial, r.Answer[0].(*dns.SOA).Serial, "%s serves dnslb's serial", d.name)
	}
}
