package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// probeTimeout is generous: CI shares two cores with other test binaries.
const probeTimeout = 5 * time.Second

func probeCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func addrOf(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	require.NoError(t, err)
	return ap
}

// closedPort returns a loopback TCP port that nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	a := addrOf(t, ln.Addr())
	require.NoError(t, ln.Close())
	return a
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, err = TCP{}.Probe(probeCtx(t, probeTimeout), addrOf(t, ln.Addr()))
	assert.NoError(t, err)

	_, err = TCP{}.Probe(probeCtx(t, probeTimeout), closedPort(t))
	assert.ErrorContains(t, err, "refused")
}

// hangingServer accepts connections and never answers until the test
// ends. Each accepted connection is announced on the returned channel if
// there is room.
func hangingServer(t *testing.T) (netip.AddrPort, <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	accepted := make(chan net.Conn, 16)
	notify := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
			select {
			case notify <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range accepted {
			c.Close()
		}
	})
	return addrOf(t, ln.Addr()), notify
}

func TestHTTPProbe(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "svc.example" && r.URL.Query().Get("want-host") != "" {
			http.Error(w, "wrong host "+r.Host, http.StatusBadRequest)
			return
		}
		w.Write([]byte("status: all good"))
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "broken", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/agent", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Agent-State", r.URL.Query().Get("words"))
		if r.URL.Query().Has("fail") {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("/method", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodHead {
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	a := addrOf(t, srv.Listener.Addr())

	for _, tc := range []struct {
		name     string
		probe    HTTP
		addr     netip.AddrPort
		wantErr  string
		mismatch bool
		report   Report
	}{
		{name: "ok", probe: HTTP{Path: "/ok"}},
		{name: "host header", probe: HTTP{Path: "/ok?want-host=1", Host: "svc.example"}},
		{name: "wrong status", probe: HTTP{Path: "/fail"}, wantErr: "status 503", mismatch: true},
		{name: "status range", probe: HTTP{Path: "/fail", StatusMin: 500, StatusMax: 503}},
		{name: "redirect is not followed and passes", probe: HTTP{Path: "/redirect"}},
		{name: "redirect out of range", probe: HTTP{Path: "/redirect", StatusMax: 299}, wantErr: "status 302", mismatch: true},
		{name: "body matches", probe: HTTP{Path: "/ok", BodyContains: "all good"}},
		{name: "body mismatch", probe: HTTP{Path: "/ok", BodyContains: "degraded"}, wantErr: "body does not contain", mismatch: true},
		{name: "not found", probe: HTTP{Path: "/missing"}, wantErr: "status 404", mismatch: true},
		{name: "method", probe: HTTP{Path: "/method", Method: http.MethodHead}},
		{name: "agent drain and weight", probe: HTTP{Path: "/agent?words=drain,75%25", AgentHeader: "X-Agent-State"},
			report: Report{Agent: AgentDrain, HasWeight: true, Weight: 75, WeightPercent: true}},
		{name: "agent words on a failed check", probe: HTTP{Path: "/agent?words=maint&fail=1", AgentHeader: "X-Agent-State"},
			wantErr: "status 503", mismatch: true, report: Report{Agent: AgentMaint}},
		{name: "agent header ignored unless asked", probe: HTTP{Path: "/agent?words=down"}},
		{name: "unknown agent words are skipped", probe: HTTP{Path: "/agent?words=up+sideways", AgentHeader: "X-Agent-State"},
			report: Report{Agent: AgentUp}},
		{name: "refused", probe: HTTP{}, addr: closedPort(t), wantErr: "refused"},
		{name: "bad scheme", probe: HTTP{Scheme: "gopher"}, wantErr: "unknown scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := a
			if tc.addr.IsValid() {
				target = tc.addr
			}
			rep, err := tc.probe.Probe(probeCtx(t, probeTimeout), target)
			assert.Equal(t, tc.report, rep)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			assert.Equal(t, tc.mismatch, errors.Is(err, ErrMismatch))
		})
	}
}

func TestHTTPProbeHangingServerTimesOut(t *testing.T) {
	a, _ := hangingServer(t)
	for _, p := range []Prober{HTTP{}, HTTP{TLSConfig: &tls.Config{}}} {
		_, err := p.Probe(probeCtx(t, 200*time.Millisecond), a)
		require.Error(t, err)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	}
}

// TestCloseCancelsProbes closes a checker while real probes hang on
// servers that never answer: Close cancels them and waits, and nothing
// is left running.
func TestCloseCancelsProbes(t *testing.T) {
	probes := []Prober{HTTP{}, HTTP{Scheme: "https"}, TCP{}}
	addrs := make([]netip.AddrPort, len(probes))
	waits := make([]<-chan struct{}, len(probes))
	for i := range probes {
		addrs[i], waits[i] = hangingServer(t)
	}
	servers := goleak.IgnoreCurrent()
	c, err := New(Config{Logger: quiet})
	require.NoError(t, err)
	for i, p := range probes {
		require.NoError(t, c.SetTarget(Target{Addr: addrs[i], Probe: p, Interval: 10 * time.Millisecond, Timeout: time.Hour}))
	}
	for _, w := range waits {
		select {
		case <-w:
		case <-time.After(30 * time.Second):
			t.Fatal("no probe reached a server")
		}
	}
	require.NoError(t, c.Close())
	goleak.VerifyNone(t, servers)
}

func TestHTTPSProbe(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("secure"))
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are the point
	srv.StartTLS()
	defer srv.Close()
	a := addrOf(t, srv.Listener.Addr())
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())

	for _, tc := range []struct {
		name    string
		probe   HTTP
		wantErr string
	}{
		{name: "unknown CA", probe: HTTP{Scheme: "https"}, wantErr: "certificate"},
		{name: "unknown CA with empty config", probe: HTTP{TLSConfig: &tls.Config{}}, wantErr: "certificate"},
		{name: "server CA", probe: HTTP{TLSConfig: &tls.Config{RootCAs: pool}, BodyContains: "secure"}},
		// httptest's certificate names example.com and 127.0.0.1.
		{name: "server CA and host name", probe: HTTP{TLSConfig: &tls.Config{RootCAs: pool}, Host: "example.com:443"}},
		{name: "name mismatch", probe: HTTP{TLSConfig: &tls.Config{RootCAs: pool}, Host: "other.example"}, wantErr: "certificate"},
		{name: "plain HTTP to a TLS server", probe: HTTP{}, wantErr: "status 400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.probe.Probe(probeCtx(t, probeTimeout), a)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestUDPProbe(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "silence" {
				continue
			}
			pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	defer func() { pc.Close(); <-done }()
	a := addrOf(t, pc.LocalAddr())

	// A closed UDP port: the ICMP port-unreachable refuses the read.
	spare, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := addrOf(t, spare.LocalAddr())
	spare.Close()

	for _, tc := range []struct {
		name    string
		probe   UDP
		addr    netip.AddrPort
		timeout time.Duration
		wantErr string
	}{
		{name: "echo", probe: UDP{Send: []byte("ping"), Expect: []byte("echo:ping")}},
		{name: "any reply", probe: UDP{Send: []byte("ping")}},
		{name: "mismatch", probe: UDP{Send: []byte("ping"), Expect: []byte("pong")}, wantErr: "does not contain"},
		{name: "no reply", probe: UDP{Send: []byte("silence")}, timeout: 200 * time.Millisecond, wantErr: "deadline exceeded"},
		{name: "port unreachable", probe: UDP{Send: []byte("ping")}, addr: closed, wantErr: "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := a
			if tc.addr.IsValid() {
				target = tc.addr
			}
			d := tc.timeout
			if d == 0 {
				d = probeTimeout
			}
			_, err := tc.probe.Probe(probeCtx(t, d), target)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestProberFunc(t *testing.T) {
	want := Report{Agent: AgentDrain}
	p := ProberFunc(func(ctx context.Context, a netip.AddrPort) (Report, error) { return want, nil })
	rep, err := p.Probe(context.Background(), netip.MustParseAddrPort("127.0.0.1:1"))
	require.NoError(t, err)
	assert.Equal(t, want, rep)
}

// agentServer answers every connection with words, after reading what
// the client sends if expect is set, and closes it.
func agentServer(t *testing.T, words string, expect string) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if expect != "" {
				buf := make([]byte, len(expect))
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != expect {
					c.Close()
					continue
				}
			}
			io.WriteString(c, words)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return addrOf(t, ln.Addr())
}

func TestAgentProbe(t *testing.T) {
	hang, _ := hangingServer(t)
	for _, tc := range []struct {
		name    string
		addr    netip.AddrPort
		probe   Agent
		want    Report
		wantErr string
	}{
		{name: "drain and weight", addr: agentServer(t, "drain 25%\n", ""), want: Report{Agent: AgentDrain, HasWeight: true, Weight: 25, WeightPercent: true}},
		{name: "no newline before close", addr: agentServer(t, "ready", ""), want: Report{Agent: AgentUp}},
		{name: "send first", addr: agentServer(t, "maint\n", "status\n"), probe: Agent{Send: []byte("status\n")}, want: Report{Agent: AgentMaint}},
		{name: "unknown words skipped", addr: agentServer(t, "up purple\n", ""), want: Report{Agent: AgentUp}},
		{name: "closed without a word", addr: agentServer(t, "", ""), wantErr: "no report"},
		{name: "refused", addr: closedPort(t), wantErr: "refused"},
		{name: "silent agent times out", addr: hang, wantErr: "deadline exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := probeTimeout
			if tc.addr == hang {
				d = 200 * time.Millisecond
			}
			rep, err := tc.probe.Probe(probeCtx(t, d), tc.addr)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, rep)
		})
	}

	// Port moves the probe to another port of the same address.
	a := agentServer(t, "down\n", "")
	rep, err := Agent{Port: a.Port()}.Probe(probeCtx(t, probeTimeout), netip.AddrPortFrom(a.Addr(), 1))
	require.NoError(t, err)
	assert.Equal(t, Report{Agent: AgentDown}, rep)
}

func TestAll(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	web := addrOf(t, srv.Listener.Addr())
	agent := agentServer(t, "drain 50%\n", "")
	both := All{HTTP{}, Agent{Port: agent.Port()}}

	rep, err := both.Probe(probeCtx(t, probeTimeout), web)
	require.NoError(t, err)
	assert.Equal(t, Report{Agent: AgentDrain, HasWeight: true, Weight: 50, WeightPercent: true}, rep)

	// The first failure ends the check; the agent is not asked.
	_, err = All{HTTP{Path: "/", StatusMin: 500}, Agent{Port: closedPort(t).Port()}}.Probe(probeCtx(t, probeTimeout), web)
	assert.ErrorIs(t, err, ErrMismatch)

	// A later report replaces an earlier one, even from a failed check.
	rep, err = All{
		ProberFunc(func(context.Context, netip.AddrPort) (Report, error) {
			return Report{Agent: AgentUp, HasWeight: true, Weight: 3}, nil
		}),
		ProberFunc(func(context.Context, netip.AddrPort) (Report, error) { return Report{Agent: AgentMaint}, errDown }),
	}.Probe(context.Background(), web)
	assert.ErrorIs(t, err, errDown)
	assert.Equal(t, Report{Agent: AgentMaint, HasWeight: true, Weight: 3}, rep)

	_, err = All{}.Probe(context.Background(), web)
	assert.NoError(t, err, "no probers: nothing fails")
}
