package certs

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lbkit/lbkit/internal/certs/certstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ca wraps certstest.CA to return Pairs.
type ca struct{ *certstest.CA }

func newCA(t testing.TB) ca { return ca{certstest.NewCA(t)} }

func (c ca) issue(t testing.TB, dir, base string, names ...string) (Pair, int64) {
	cf, kf, sn := c.Issue(t, dir, base, names...)
	return Pair{CertFile: cf, KeyFile: kf}, sn
}

// dial runs a handshake between a server on cfg and a client on ccfg
// over an in-memory pipe; the server sends one byte, which the client
// reads (so a TLS 1.3 session ticket is received). The pipe is closed at
// cleanup.
func dial(t *testing.T, cfg, ccfg *tls.Config) (*tls.Conn, *tls.Conn) {
	t.Helper()
	a, b := net.Pipe()
	srv, cli := tls.Server(a, cfg), tls.Client(b, ccfg)
	// Close the pipe, not the TLS connections: their close_notify would
	// wait for a reader that is gone.
	t.Cleanup(func() { a.Close(); b.Close() })
	errc := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err == nil {
			_, err = srv.Write([]byte("x"))
		}
		errc <- err
	}()
	err := cli.Handshake()
	if err == nil {
		_, err = cli.Read(make([]byte, 1))
	}
	if err != nil {
		a.Close()
		<-errc
		require.NoError(t, err)
	}
	require.NoError(t, <-errc)
	return srv, cli
}

func client(c ca, name string) *tls.Config {
	return &tls.Config{RootCAs: c.Pool, ServerName: name}
}

func served(c *tls.Conn) int64 { return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64() }

func TestSNIPicksCertificate(t *testing.T) {
	c, dir := newCA(t), t.TempDir()
	def, defSN := c.issue(t, dir, "default", "default.example")
	www, wwwSN := c.issue(t, dir, "www", "www.example.com", "example.com")
	wild, wildSN := c.issue(t, dir, "wild", "*.example.net")
	api, apiSN := c.issue(t, dir, "api", "api.example.net")
	st, err := New(Config{Pairs: []Pair{def, www, wild, api}})
	require.NoError(t, err)
	defer st.Close()
	for _, tc := range []struct {
		name string
		want int64
	}{
		{"www.example.com", wwwSN},
		{"example.com", wwwSN},
		{"WWW.Example.COM", wwwSN},
		{"x.example.net", wildSN},
		{"api.example.net", apiSN}, // exact beats wildcard
		{"a.b.example.net", defSN}, // a wildcard covers one label
		{"example.net", defSN},
		{"other.test", defSN},
		{"", defSN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ccfg := &tls.Config{ServerName: tc.name, InsecureSkipVerify: true}
			_, cli := dial(t, st.Config(), ccfg)
			assert.Equal(t, tc.want, served(cli))
		})
	}
}

// Of two certificates for one name, a client gets the first it supports.
func TestSNIPicksSupportedKeyType(t *testing.T) {
	c, dir := newCA(t), t.TempDir()
	ec, ecSN := c.issue(t, dir, "ec", "a.example")
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	cf, kf, rsaSN := c.IssueKey(t, dir, "rsa", rk, "a.example")
	st, err := New(Config{Pairs: []Pair{ec, {CertFile: cf, KeyFile: kf}}})
	require.NoError(t, err)
	defer st.Close()

	_, cli := dial(t, st.Config(), client(c, "a.example"))
	assert.Equal(t, ecSN, served(cli), "ECDSA, listed first")
	rsaOnly := client(c, "a.example")
	rsaOnly.MaxVersion = tls.VersionTLS12
	rsaOnly.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
	_, cli = dial(t, st.Config(), rsaOnly)
	assert.Equal(t, rsaSN, served(cli), "RSA for a client without ECDSA suites")
}

func TestALPNAndVersions(t *testing.T) {
	c, dir := newCA(t), t.TempDir()
	p, _ := c.issue(t, dir, "a", "a.example")
	st, err := New(Config{Pairs: []Pair{p}})
	require.NoError(t, err)
	defer st.Close()
	offer := client(c, "a.example")
	offer.NextProtos = []string{"h2", "http/1.1"}

	_, cli := dial(t, st.Config(), offer)
	assert.Equal(t, "h2", cli.ConnectionState().NegotiatedProtocol)
	_, cli = dial(t, st.ConfigALPN("http/1.1"), offer.Clone())
	assert.Equal(t, "http/1.1", cli.ConnectionState().NegotiatedProtocol)
	assert.Equal(t, []string{"h2", "http/1.1"}, st.Config().NextProtos)
	assert.Same(t, st.innerFor([]string{"http/1.1"}), st.innerFor([]string{"http/1.1"}))
	assert.NotSame(t, st.innerFor([]string{"a b"}), st.innerFor([]string{"a", "b"}))

	old := client(c, "a.example")
	old.MaxVersion = tls.VersionTLS11
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Server(a, st.Config()).Handshake()
	require.Error(t, tls.Client(b, old).Handshake(), "TLS 1.1 must be refused")

	_, err = New(Config{Pairs: []Pair{p}, MinVersion: tls.VersionTLS10})
	require.Error(t, err)
	_, err = New(Config{})
	require.Error(t, err)
	_, err = New(Config{Pairs: []Pair{{CertFile: filepath.Join(dir, "missing.pem"), KeyFile: p.KeyFile}}})
	require.ErrorIs(t, err, os.ErrNotExist)
}

// A certificate replaced on disk is served from the next handshake on,
// without a call, while a connection made before goes on.
func TestWatchReloadsReplacedFiles(t *testing.T) {
	c, dir := newCA(t), t.TempDir()
	p, oldSN := c.issue(t, dir, "site", "site.example")
	reloaded := make(chan error, 16)
	st, err := New(Config{Pairs: []Pair{p}, Watch: true, Debounce: 20 * time.Millisecond, OnReload: func(err error) { reloaded <- err }})
	require.NoError(t, err)
	defer st.Close()

	srv, cli := dial(t, st.Config(), client(c, "site.example"))
	require.Equal(t, oldSN, served(cli))

	_, newSN := c.issue(t, dir, "site", "site.example")
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case err := <-reloaded:
			if done = err == nil; !done {
				t.Logf("reload during the replacement: %v", err)
			}
		case <-timeout:
			t.Fatal("no reload within 10s of replacing the files")
		}
	}
	_, cli2 := dial(t, st.Config(), client(c, "site.example"))
	assert.Equal(t, newSN, served(cli2))

	// The connection made before the reload still carries data both ways.
	go srv.Write([]byte("after"))
	buf := make([]byte, 5)
	_, err = cli.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "after", string(buf))
	go cli.Write([]byte("back"))
	_, err = srv.Read(buf[:4])
	require.NoError(t, err)
	assert.Equal(t, oldSN, served(cli))
}

// Reload keeps the certificates it had when a pair no longer loads.
func TestReloadKeepsOldOnError(t *testing.T) {
	c, dir := newCA(t), t.TempDir()
	p, sn := c.issue(t, dir, "site", "site.example")
	st, err := New(Config{Pairs: []Pair{p}})
	require.NoError(t, err)
	defer st.Close()
	require.NoError(t, os.WriteFile(p.KeyFile, []byte("not a key"), 0o600))
	require.Error(t, st.Reload())
	_, cli := dial(t, st.Config(), client(c, "site.example"))
	assert.Equal(t, sn, served(cli))

	// A key that belongs to another certificate is refused too.
	q, _ := c.issue(t, dir, "other", "other.example")
	p.KeyFile = q.KeyFile
	st2, err := New(Config{Pairs: []Pair{p}})
	require.Error(t, err)
	assert.Nil(t, st2)
}

// Sessions resume across a reload (the ticket keys are the store's, not
// the certificates'), for TLS 1.3 and 1.2, through clones of the
// configuration as net/http makes.
func TestResumptionAcrossReload(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			c, dir := newCA(t), t.TempDir()
			p, _ := c.issue(t, dir, "site", "site.example")
			st, err := New(Config{Pairs: []Pair{p}})
			require.NoError(t, err)
			defer st.Close()
			cfg := st.Config().Clone()
			ccfg := client(c, "site.example")
			ccfg.MaxVersion = v
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

			_, cli := dial(t, cfg, ccfg)
			require.False(t, cli.ConnectionState().DidResume)
			_, cli = dial(t, cfg, ccfg)
			require.True(t, cli.ConnectionState().DidResume, "second connection resumes")

			_, newSN := c.issue(t, dir, "site", "site.example")
			require.NoError(t, st.Reload())
			_, cli = dial(t, cfg, ccfg)
			assert.True(t, cli.ConnectionState().DidResume, "resumes after a reload")

			// A fresh client gets the new certificate.
			_, cli = dial(t, cfg, client(c, "site.example"))
			assert.Equal(t, newSN, served(cli))
		})
	}
}

// A ticket is accepted while its key is among the TicketKeys newest, and
// refused after; with tickets off nothing resumes.
func TestTicketKeyRotation(t *testing.T) {
	c, dir := newCA(t), t.TempDir()
	p, _ := c.issue(t, dir, "site", "site.example")
	st, err := New(Config{Pairs: []Pair{p}, TicketKeys: 2})
	require.NoError(t, err)
	defer st.Close()
	cfg := st.Config().Clone()
	ccfg := client(c, "site.example")
	ccfg.MaxVersion = tls.VersionTLS12 // one ticket per session, replaced on resumption only if re-issued
	ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	dial(t, cfg, ccfg)

	st.rotate() // the ticket's key is now the older of two
	_, cli := dial(t, cfg, ccfg)
	require.True(t, cli.ConnectionState().DidResume)

	// Resumption re-issued the ticket under the newest key; two more
	// rotations push that key out.
	st.rotate()
	st.rotate()
	_, cli = dial(t, cfg, ccfg)
	assert.False(t, cli.ConnectionState().DidResume, "ticket of a dropped key is refused")

	off, err := New(Config{Pairs: []Pair{p}, TicketRotation: -1})
	require.NoError(t, err)
	defer off.Close()
	ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	dial(t, off.Config(), ccfg)
	_, cli = dial(t, off.Config(), ccfg)
	assert.False(t, cli.ConnectionState().DidResume)
}
