package h1

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/netip"
	"strconv"
	"time"
)

// Cookie signing: a cookie that names a backend carries an opaque,
// HMAC-signed token of its address, so a client can neither read which
// backend it is on nor forge a cookie for another.

// TokenLen is the length of a [CookieSigner] token.
var TokenLen = base64.RawURLEncoding.EncodedLen(16)

// CookieSigner names backends in cookies. Its zero value is not usable;
// make one with [NewCookieSigner].
type CookieSigner struct {
	key    []byte
	domain string
	// Attrs is what follows the value in a Set-Cookie field ("; Path=/;
	// HttpOnly; SameSite=Lax", with Max-Age and Secure as configured).
	Attrs string
}

// NewCookieSigner returns a signer for domain (the front-end's name,
// which keeps one product's tokens from being valid for another's) with
// key, which must be at least 16 bytes; nil means a random key, so
// cookies do not outlive the process. maxAge > 0 adds Max-Age (whole
// seconds), secure adds Secure.
func NewCookieSigner(domain string, key []byte, maxAge time.Duration, secure bool) (*CookieSigner, error) {
	if key == nil {
		key = make([]byte, 32)
		rand.Read(key)
	} else if len(key) < 16 {
		return nil, errors.New("CookieKey must be at least 16 bytes")
	}
	attrs := "; Path=/"
	if maxAge > 0 {
		attrs += "; Max-Age=" + strconv.FormatInt(int64(maxAge/time.Second), 10)
	}
	attrs += "; HttpOnly; SameSite=Lax"
	if secure {
		attrs += "; Secure"
	}
	return &CookieSigner{key: key, domain: domain, Attrs: attrs}, nil
}

// Token returns the cookie value naming addr: the first 16 bytes of
// HMAC-SHA256(key, "lbkit/" domain 0x00 addr), base64url, TokenLen bytes.
func (s *CookieSigner) Token(addr netip.AddrPort) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("lbkit/" + s.domain + "\x00"))
	m.Write([]byte(addr.String()))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// SetCookie returns a whole Set-Cookie value: name=token and Attrs.
func (s *CookieSigner) SetCookie(name, token string) string {
	return name + "=" + token + s.Attrs
}

// ValidCookieName reports whether s may name a cookie (an RFC 6265
// cookie-name: a token).
func ValidCookieName(s string) bool { return IsToken(s) }

// cookieValue returns the value of the first cookie named name in one
// Cookie field value ("a=1; b=2"). It does not allocate.
func cookieValue(line, name string) (string, bool) {
	v, _, ok := CutCookie(line, name)
	return v, ok
}

// CutCookie finds the next cookie named name in a Cookie field value and
// returns its value and the rest of the line after it, for a caller that
// looks at every cookie of that name. It does not allocate.
func CutCookie(line, name string) (value, rest string, found bool) {
	for len(line) > 0 {
		i := 0
		for i < len(line) && line[i] != ';' {
			i++
		}
		part := trimOWS(line[:i])
		if i < len(line) {
			i++
		}
		line = line[i:]
		if len(part) > len(name) && part[len(name)] == '=' && part[:len(name)] == name {
			return part[len(name)+1:], line, true
		}
	}
	return "", "", false
}
