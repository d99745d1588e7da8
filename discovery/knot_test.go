package discovery

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
)

// This file starts a real Knot DNS server for the DNS source's tests, the
// way dnslb's tests do (see dnslb/knot_test.go).

// testKeySecret is the TSIG secret of the Knot servers the tests start.
const testKeySecret = "bGJraXQtdGVzdC1rZXktbm90LWEtc2VjcmV0IQ=="

// knotServer is a knotd the test started, serving one zone from a zone
// file with dynamic updates allowed for key "lbkit." (hmac-sha256).
// Updates live in memory only, so a restart serves the zone file again.
type knotServer struct {
	t      testing.TB
	bin    string
	dir    string
	addr   string
	origin string
	cmd    *exec.Cmd
	exited chan struct{}
}

// knotdPath returns knotd's path. Without knotd the test is skipped
// outside CI and fails in CI.
func knotdPath(t testing.TB) string {
	t.Helper()
	if bin, err := exec.LookPath("knotd"); err == nil {
		return bin
	}
	if _, err := os.Stat("/usr/sbin/knotd"); err == nil {
		return "/usr/sbin/knotd"
	}
	if os.Getenv("CI") != "" {
		t.Fatal("knotd not found: install Debian package knot (CI must run the DNS discovery tests)")
	}
	t.Skip("knotd not found: install Debian package knot to run the DNS discovery tests against a real server")
	return ""
}

// freePort returns a port free for both UDP and TCP on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func startKnot(t testing.TB, origin, zoneText string) *knotServer {
	t.Helper()
	k := &knotServer{t: t, bin: knotdPath(t), dir: t.TempDir(), origin: origin}
	port := freePort(t)
	k.addr = fmt.Sprintf("127.0.0.1:%d", port)
	user := ""
	if os.Geteuid() == 0 {
		// As root, knotd would switch to user knot, which cannot read
		// the test's directory.
		user = "    user: root:root\n"
	}
	conf := fmt.Sprintf(`server:
    rundir: "%[1]s"
    listen: 127.0.0.1@%[2]d
%[5]s    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "%[1]s"
log:
  - target: stderr
    any: notice
key:
  - id: lbkit.
    algorithm: hmac-sha256
    secret: %[3]s
acl:
  - id: update
    key: lbkit.
    action: update
template:
  - id: default
    storage: "%[1]s"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: %[4]s
    file: "zone.txt"
    acl: update
`, k.dir, port, testKeySecret, origin, user)
	require.NoError(t, os.WriteFile(filepath.Join(k.dir, "knot.conf"), []byte(conf), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(k.dir, "zone.txt"), []byte(zoneText), 0o600))
	k.start()
	t.Cleanup(k.stop)
	return k
}

// start runs knotd in the foreground and waits until it serves the zone.
func (k *knotServer) start() {
	k.t.Helper()
	logf, err := os.OpenFile(filepath.Join(k.dir, "knotd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(k.t, err)
	defer logf.Close()
	k.cmd = exec.Command(k.bin, "-c", filepath.Join(k.dir, "knot.conf"))
	k.cmd.Stdout, k.cmd.Stderr = logf, logf
	require.NoError(k.t, k.cmd.Start())
	k.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(k.cmd, k.exited)
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := new(dns.Msg)
		m.SetQuestion(k.origin, dns.TypeSOA)
		c := &dns.Client{Net: "tcp", Timeout: 500 * time.Millisecond}
		if r, _, err := c.Exchange(m, k.addr); err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 {
			return
		}
		select {
		case <-k.exited:
			log, _ := os.ReadFile(filepath.Join(k.dir, "knotd.log"))
			k.t.Fatalf("knotd exited early:\n%s", log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(k.dir, "knotd.log"))
			k.stop()
			k.t.Fatalf("knotd did not start serving %s:\n%s", k.origin, log)
		}
		time.Sleep(50 * time.Millisecond) // polling an external process until it serves
	}
}

// stop kills the knotd this test started, by PID, and waits for it.
func (k *knotServer) stop() {
	if k.cmd == nil || k.cmd.Process == nil {
		return
	}
	select {
	case <-k.exited:
	default:
		k.cmd.Process.Kill()
		<-k.exited
	}
	k.cmd = nil
}

// update sends one RFC 2136 UPDATE signed with the test key: the records
// of remove are deleted, then those of insert added (zone-file text).
func (k *knotServer) update(remove, insert []string) {
	k.t.Helper()
	rrs := func(texts []string) []dns.RR {
		var out []dns.RR
		for _, s := range texts {
			rr, err := dns.NewRR(s)
			require.NoError(k.t, err, s)
			out = append(out, rr)
		}
		return out
	}
	m := new(dns.Msg)
	m.SetUpdate(k.origin)
	if len(remove) > 0 {
		m.Remove(rrs(remove))
	}
	if len(insert) > 0 {
		m.Insert(rrs(insert))
	}
	m.SetTsig("lbkit.", dns.HmacSHA256, 300, time.Now().Unix())
	c := &dns.Client{Net: "tcp", TsigSecret: map[string]string{"lbkit.": testKeySecret}, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, k.addr)
	require.NoError(k.t, err)
	require.Equal(k.t, dns.RcodeSuccess, r.Rcode, "update refused: %s", dns.RcodeToString[r.Rcode])
}
