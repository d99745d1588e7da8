package dnslb

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
)

// testKeySecret is the TSIG secret of the Knot servers the tests start.
const testKeySecret = "bGJraXQtdGVzdC1rZXktbm90LWEtc2VjcmV0IQ=="

// knotServer is a knotd the test started, serving one zone from a zone
// file with dynamic updates allowed for key "lbkit." (hmac-sha256).
// Updates live in memory only (no journal, no zone file sync), so a
// restart serves the zone file again.
type knotServer struct {
	t      testing.TB
	bin    string
	dir    string
	addr   string
	origin string
	cmd    *exec.Cmd
	exited chan struct{}
}

// knotdPath returns knotd's path, skipping the test when it is absent
// outside CI and failing it in CI.
func knotdPath(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("knotd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/knotd"); serr == nil {
			return "/usr/sbin/knotd"
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("knotd not found (install Debian package knot): %v", err)
		}
		t.Skipf("knotd not found (install Debian package knot to run this test): %v", err)
	}
	return bin
}

// knotUser returns the server.user line: as root, keep knotd root (it
// would switch to user knot, which cannot read the test's temp dir);
// otherwise leave it out, knotd runs as the calling user.
func knotUser() string {
	if os.Geteuid() == 0 {
		return "    user: root:root\n"
	}
	return ""
}

// freePort returns a port free for both UDP and TCP on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		// TCP first: the kernel then picks a port no TCP socket uses,
		// outgoing connections included.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func startKnot(t testing.TB, origin, zoneText string) *knotServer {
	t.Helper()
	k := &knotServer{t: t, bin: knotdPath(t), dir: t.TempDir(), origin: origin}
	k.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, port, _ := net.SplitHostPort(k.addr)
	conf := fmt.Sprintf(`server:
    rundir: "%[1]s"
    listen: 127.0.0.1@%[2]s
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
  - id: other.
    algorithm: hmac-sha256
    secret: b3RoZXIta2V5LW90aGVyLXNlY3JldA==
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
`, k.dir, port, testKeySecret, origin, knotUser())
	require.NoError(t, os.WriteFile(filepath.Join(k.dir, "knot.conf"), []byte(conf), 0o600))
	k.writeZone(zoneText)
	k.start()
	t.Cleanup(k.stop)
	return k
}

func (k *knotServer) writeZone(text string) {
	require.NoError(k.t, os.WriteFile(filepath.Join(k.dir, "zone.txt"), []byte(text), 0o600))
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
		time.Sleep(50 * time.Millisecond) // polling an external process
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

// restart stops knotd, resets the zone file to text and starts it again.
func (k *knotServer) restart(text string) {
	k.t.Helper()
	k.stop()
	k.writeZone(text)
	k.start()
}

// lookup returns the sorted addresses knot answers for name and type, and
// the zone's SOA serial.
func (k *knotServer) lookup(name string, qtype uint16) ([]string, uint32) {
	k.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	r, _, err := c.ExchangeContext(context.Background(), m, k.addr)
	require.NoError(k.t, err)
	out := addrs(r)
	slices.Sort(out)
	m.SetQuestion(k.origin, dns.TypeSOA)
	r, _, err = c.ExchangeContext(context.Background(), m, k.addr)
	require.NoError(k.t, err)
	require.Len(k.t, r.Answer, 1)
	return out, r.Answer[0].(*dns.SOA).Serial
}
