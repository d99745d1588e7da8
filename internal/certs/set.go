package certs

import (
	"crypto/tls"
	"fmt"
	"strings"
)

// certSet is one immutable load of the pairs: what handshakes pick from.
// A reload builds a new one and swaps it in.
type certSet struct {
	def   *tls.Certificate              // the first pair
	exact map[string][]*tls.Certificate // lower-case DNS name -> pairs naming it
	wild  map[string][]*tls.Certificate // "example.com" for *.example.com
}

// loadSet reads and indexes pairs by the DNS names of their leaf
// certificates, in the order given.
func loadSet(pairs []Pair) (*certSet, error) {
	s := &certSet{exact: make(map[string][]*tls.Certificate), wild: make(map[string][]*tls.Certificate)}
	for _, p := range pairs {
		c, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("certs: %s: %w", p.CertFile, err)
		}
		if s.def == nil {
			s.def = &c
		}
		for _, n := range c.Leaf.DNSNames {
			n = strings.ToLower(strings.TrimSuffix(n, "."))
			if base, ok := strings.CutPrefix(n, "*."); ok {
				s.wild[base] = append(s.wild[base], &c)
			} else {
				s.exact[n] = append(s.exact[n], &c)
			}
		}
	}
	return s, nil
}

// pick returns the certificate for a client: one naming its server name
// exactly, else one whose wildcard covers the name's first label, else
// the default. Among several for a name it takes the first the client
// supports (say an ECDSA and an RSA certificate for one name).
func (s *certSet) pick(hello *tls.ClientHelloInfo) *tls.Certificate {
	// crypto/tls refuses a trailing dot in SNI; case is the client's.
	name := strings.ToLower(hello.ServerName) // no allocation when already lower case
	if name == "" {
		return s.def
	}
	if cs, ok := s.exact[name]; ok {
		return first(cs, hello)
	}
	if _, base, ok := strings.Cut(name, "."); ok {
		if cs, ok := s.wild[base]; ok {
			return first(cs, hello)
		}
	}
	return s.def
}

func first(cs []*tls.Certificate, hello *tls.ClientHelloInfo) *tls.Certificate {
	if len(cs) > 1 {
		for _, c := range cs {
			if hello.SupportsCertificate(c) == nil {
				return c
			}
		}
	}
	return cs[0]
}
