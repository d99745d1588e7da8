package tcpproxy

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/proxyproto"
)

// testCA is a certificate authority made for one test, which issues leaf
// certificates for server names.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tcpproxy test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue writes a leaf certificate for names and its key as PEM files in
// dir and returns them.
func (ca *testCA) issue(t *testing.T, dir string, serial int64, names ...string) CertFiles {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	f := CertFiles{CertFile: filepath.Join(dir, names[0]+".crt"), KeyFile: filepath.Join(dir, names[0]+".key")}
	require.NoError(t, os.WriteFile(f.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(f.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return f
}

// tlsNamed is a TLS backend (certificate f) that answers each connection
// with its name, then echoes.
func tlsNamed(t *testing.T, f CertFiles, name string) func(net.Conn) {
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	require.NoError(t, err)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	return func(c net.Conn) { named(name)(tls.Server(c, cfg)) }
}

// tlsGreeting dials addr with TLS for serverName and returns the first
// line the backend sends, and the connection.
func tlsGreeting(t *testing.T, addr, serverName string, cfg *tls.Config) (string, *tls.Conn) {
	t.Helper()
	cfg = cfg.Clone()
	cfg.ServerName = serverName
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", addr, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	return line, c
}

// TestRoutesBySNI: TLS connections go to the pool their server name
// routes to, exact names before wildcards, case aside; others to Pool.
// The TLS session is the backend's: the proxy only read the hello.
func TestRoutesBySNI(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	cert := ca.issue(t, dir, 2, "a.example", "b.example", "x.wild.example", "wild.example", "other.example")
	a := startBackend(t, tlsNamed(t, cert, "a"))
	b := startBackend(t, tlsNamed(t, cert, "b"))
	w := startBackend(t, tlsNamed(t, cert, "wild"))
	def := startBackend(t, tlsNamed(t, cert, "default"))
	_, addr := startProxy(t, Config{
		Pool: newPool(t, nil, def.addr),
		Routes: map[string]*balancer.Pool{
			"a.example":      newPool(t, nil, a.addr),
			"B.Example.":     newPool(t, nil, b.addr),
			"*.wild.example": newPool(t, nil, w.addr),
		},
	})
	client := &tls.Config{RootCAs: ca.pool}
	for _, tc := range []struct{ sni, want string }{
		{"a.example", "a"},
		{"b.example", "b"},
		{"A.EXAMPLE", "a"},
		{"x.wild.example", "wild"},
		{"wild.example", "default"}, // a wildcard needs one more label
		{"other.example", "default"},
	} {
		t.Run(tc.sni, func(t *testing.T) {
			got, c := tlsGreeting(t, addr, tc.sni, client)
			assert.Equal(t, tc.want+"\n", got)
			_, err := io.WriteString(c, "ping\n")
			require.NoError(t, err)
			echo, err := bufio.NewReader(c).ReadString('\n')
			require.NoError(t, err)
			assert.Equal(t, "ping\n", echo, "the stream after the hello is proxied")
		})
	}
	t.Run("no SNI", func(t *testing.T) {
		got, _ := tlsGreeting(t, addr, "", &tls.Config{InsecureSkipVerify: true})
		assert.Equal(t, "default\n", got)
	})
}

// TestRoutesNotTLS: with Routes, a client that does not speak TLS goes
// to Pool with its bytes intact, and one that stays silent is closed
// after HeaderTimeout.
func TestRoutesNotTLS(t *testing.T) {
	plain := startBackend(t, echo)
	other := startBackend(t, echo)
	_, addr := startProxy(t, Config{
		Pool:          newPool(t, nil, plain.addr),
		Routes:        map[string]*balancer.Pool{"a.example": newPool(t, nil, other.addr)},
		HeaderTimeout: 200 * time.Millisecond,
	})
	c := dial(t, addr)
	_, err := io.WriteString(c, "hello, plain text\n")
	require.NoError(t, err)
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "hello, plain text\n", line)
	assert.EqualValues(t, 0, other.accepted.Load())

	silent := dial(t, addr)
	_, err = silent.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "closed after HeaderTimeout")
}

// TestTLSTermination: the proxy completes the handshake with the
// certificate the client's server name picks, agrees on ALPN, resumes
// sessions (across an Update too), forwards plaintext, names the server
// and protocol to the backend in the PROXY v2 header, and reloads
// certificates on Update.
func TestTLSTermination(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certA := ca.issue(t, dir, 2, "a.example")
	certB := ca.issue(t, dir, 3, "b.example")
	type seen struct {
		h    proxyproto.Header
		line string
	}
	got := make(chan seen, 10)
	be := startBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			got <- seen{}
			return
		}
		line, _ := br.ReadString('\n')
		got <- seen{h, line}
		io.WriteString(c, "plain:"+line)
	})
	bPool := newPool(t, nil, be.addr)
	cfg := Config{
		Pool:          newPool(t, nil, be.addr),
		Routes:        map[string]*balancer.Pool{"b.example": bPool},
		ProxyProtocol: proxyproto.V2,
		TLS:           &TLS{Certificates: []CertFiles{certA, certB}, NextProtos: []string{"h2", "http/1.1"}},
	}
	p, addr := startProxy(t, cfg)
	cache := tls.NewLRUClientSessionCache(8)
	client := &tls.Config{RootCAs: ca.pool, NextProtos: []string{"h2"}, ClientSessionCache: cache, ServerName: "b.example"}

	roundTrip := func(cfg *tls.Config) tls.ConnectionState {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", addr, cfg)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(wait))
		_, err = io.WriteString(c, "hello\n")
		require.NoError(t, err)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "plain:hello\n", line)
		s := <-got
		assert.Equal(t, "hello\n", s.line, "the backend gets plaintext")
		tlvs := map[uint8]string{}
		for _, tlv := range s.h.TLVs {
			tlvs[tlv.Type] = string(tlv.Value)
		}
		cs := c.ConnectionState()
		assert.Equal(t, cs.NegotiatedProtocol, tlvs[proxyproto.TypeALPN])
		assert.Equal(t, cfg.ServerName, tlvs[proxyproto.TypeAuthority])
		return cs
	}

	cs := roundTrip(client)
	assert.Equal(t, "h2", cs.NegotiatedProtocol)
	assert.Equal(t, []string{"b.example"}, cs.PeerCertificates[0].DNSNames, "SNI picks the certificate")
	assert.False(t, cs.DidResume)
	assert.True(t, roundTrip(client).DidResume, "session resumption")

	a := client.Clone()
	a.ServerName, a.NextProtos, a.ClientSessionCache = "a.example", []string{"http/1.1"}, nil
	cs = roundTrip(a)
	assert.Equal(t, []string{"a.example"}, cs.PeerCertificates[0].DNSNames)
	assert.Equal(t, "http/1.1", cs.NegotiatedProtocol)

	// Reload: new files for a.example's name, same paths.
	renewed := ca.issue(t, dir, 4, "a.example")
	require.Equal(t, certA, renewed)
	require.NoError(t, p.Update(cfg))
	cs = roundTrip(a)
	assert.Equal(t, big.NewInt(4), cs.PeerCertificates[0].SerialNumber, "Update reloads the certificate files")
	assert.True(t, roundTrip(client).DidResume, "tickets survive the Update")
}

// TestTLSConfigErrors: bad TLS files and routes without a pool are
// rejected by New and Update.
func TestTLSConfigErrors(t *testing.T) {
	pool := newPool(t, nil)
	for name, cfg := range map[string]Config{
		"no certificate": {Pool: pool, TLS: &TLS{}},
		"missing file":   {Pool: pool, TLS: &TLS{Certificates: []CertFiles{{CertFile: "/nonexistent.crt", KeyFile: "/nonexistent.key"}}}},
		"nil route":      {Pool: pool, Routes: map[string]*balancer.Pool{"a.example": nil}},
	} {
		_, err := New(cfg)
		assert.ErrorContains(t, err, "tcpproxy:", name)
	}
}

// TestTLSHandshakeFails: a client that fails the handshake (it does not
// trust the certificate) never reaches a backend.
func TestTLSHandshakeFails(t *testing.T) {
	ca := newTestCA(t)
	be := startBackend(t, echo)
	_, addr := startProxy(t, Config{
		Pool: newPool(t, nil, be.addr),
		TLS:  &TLS{Certificates: []CertFiles{ca.issue(t, t.TempDir(), 2, "a.example")}},
	})
	_, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", addr, &tls.Config{ServerName: "a.example"})
	require.Error(t, err)
	c := dial(t, addr)
	io.WriteString(c, "not a hello at all\r\n\r\n")
	_, err = io.ReadAll(c)
	require.NoError(t, err, "closed")
	assert.EqualValues(t, 0, be.accepted.Load())
}
