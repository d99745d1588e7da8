// Package knottest starts a real Knot DNS server (Debian package knot) for
// tests: one zone from a zone file, dynamic updates allowed for the TSIG
// key KeyName (hmac-sha256, secret KeySecret), on a free loopback port.
// Updates live in memory only (no journal, no zone-file sync), so a
// restart serves the zone file again. The server is stopped, by its PID,
// when the test ends.
package knottest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The TSIG key the servers accept updates from, and a second key they
// know but give no rights.
const (
	KeyName        = "lbkit."
	KeySecret      = "bGJraXQtdGVzdC1rZXktbm90LWEtc2VjcmV0IQ=="
	OtherKeyName   = "other."
	OtherKeySecret = "b3RoZXIta2V5LW90aGVyLXNlY3JldA=="
)

// Server is a knotd the test started.
type Server struct {
	t      testing.TB
	bin    string
	dir    string
	addr   string
	origin string
	cmd    *exec.Cmd
	exited chan struct{}
}

// Path returns knotd's path. Without knotd the test is skipped outside CI
// and fails in CI (CI set), where scripts/test.sh installs it.
func Path(t testing.TB) string {
	t.Helper()
	if bin, err := exec.LookPath("knotd"); err == nil {
		return bin
	}
	if _, err := os.Stat("/usr/sbin/knotd"); err == nil {
		return "/usr/sbin/knotd"
	}
	if os.Getenv("CI") != "" {
		t.Fatal("knotd not found: install Debian package knot (scripts/test.sh does)")
	}
	t.Skip("knotd not found: install Debian package knot to run this test against a real server")
	return ""
}

// UserLine returns the server.user line of a knot.conf: as root, keep
// knotd root (it would switch to user knot, which cannot read the test's
// temporary directory); otherwise none, and knotd runs as the caller.
func UserLine() string {
	if os.Geteuid() == 0 {
		return "    user: root:root\n"
	}
	return ""
}

// FreePort returns a port free for both UDP and TCP on 127.0.0.1. TCP is
// probed first: the kernel then picks a port no TCP socket uses, outgoing
// connections included.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("knottest: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("knottest: no port free for UDP and TCP")
	return 0
}

// Start starts knotd serving origin from zoneText, waits until it answers
// the zone's SOA, and stops it when the test ends.
func Start(t testing.TB, origin, zoneText string) *Server {
	t.Helper()
	k := &Server{t: t, bin: Path(t), dir: t.TempDir(), origin: origin}
	port := FreePort(t)
	k.addr = fmt.Sprintf("127.0.0.1:%d", port)
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
  - id: %[6]s
    algorithm: hmac-sha256
    secret: %[3]s
  - id: %[7]s
    algorithm: hmac-sha256
    secret: %[8]s
acl:
  - id: update
    key: %[6]s
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
`, k.dir, port, KeySecret, origin, UserLine(), KeyName, OtherKeyName, OtherKeySecret)
	if err := os.WriteFile(filepath.Join(k.dir, "knot.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	k.WriteZone(zoneText)
	k.Start()
	t.Cleanup(k.Stop)
	return k
}

// Addr returns the server's address, 127.0.0.1:port (UDP and TCP).
func (k *Server) Addr() string { return k.addr }

// Origin returns the zone the server serves.
func (k *Server) Origin() string { return k.origin }

// WriteZone replaces the zone file; knotd reads it at its next start.
func (k *Server) WriteZone(text string) {
	k.t.Helper()
	if err := os.WriteFile(filepath.Join(k.dir, "zone.txt"), []byte(text), 0o600); err != nil {
		k.t.Fatal(err)
	}
}

// Start runs knotd in the foreground and waits until it serves the zone.
func (k *Server) Start() {
	k.t.Helper()
	logf, err := os.OpenFile(filepath.Join(k.dir, "knotd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		k.t.Fatal(err)
	}
	defer logf.Close()
	k.cmd = exec.Command(k.bin, "-c", filepath.Join(k.dir, "knot.conf"))
	k.cmd.Stdout, k.cmd.Stderr = logf, logf
	if err := k.cmd.Start(); err != nil {
		k.t.Fatal(err)
	}
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
			k.Stop()
			k.t.Fatalf("knotd did not start serving %s:\n%s", k.origin, log)
		}
		time.Sleep(50 * time.Millisecond) // polling an external process
	}
}

// Stop kills the knotd this test started, by PID, and waits for it.
func (k *Server) Stop() {
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

// Restart stops knotd, resets the zone file to text and starts it again.
func (k *Server) Restart(text string) {
	k.t.Helper()
	k.Stop()
	k.WriteZone(text)
	k.Start()
}
