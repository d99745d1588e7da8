// Package certstest makes certificates for tests and benchmarks: a
// throw-away certificate authority that issues ECDSA P-256 server
// certificates into PEM files.
package certstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a certificate authority valid for a day. Its methods are safe for
// concurrent use.
type CA struct {
	// Cert is the authority's certificate, Key its key.
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// Pool holds Cert: use it as a client's RootCAs.
	Pool   *x509.CertPool
	serial atomic.Int64
}

// NewCA makes a certificate authority; it fails t on error.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lbkit test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c := &CA{Cert: cert, Key: key, Pool: pool}
	c.serial.Store(1)
	return c
}

// Issue writes an ECDSA P-256 server certificate for the DNS names
// (IP addresses are also accepted), signed by c, to dir/<base>.pem and its
// key to dir/<base>.key, each replacing an older file by a rename as
// certificate managers do. It returns the two paths and the
// certificate's serial number, unique per CA; it fails t on error.
func (c *CA) Issue(t testing.TB, dir, base string, names ...string) (certFile, keyFile string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return c.IssueKey(t, dir, base, key, names...)
}

// IssueKey is [CA.Issue] for a key of the caller's (an RSA key, say).
func (c *CA) IssueKey(t testing.TB, dir, base string, key crypto.Signer, names ...string) (certFile, keyFile string, serial int64) {
	t.Helper()
	serial = c.serial.Add(1)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := parseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, key.Public(), c.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, base+".pem"), filepath.Join(dir, base+".key")
	write := func(path string, block *pem.Block) {
		tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp")
		if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(keyFile, &pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	write(certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	return certFile, keyFile, serial
}

func parseIP(s string) net.IP { return net.ParseIP(s) }
