package h1

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCookieSigner(t *testing.T) {
	key := []byte("0123456789abcdef")
	s, err := NewCookieSigner("redirect", key, 90*time.Second, true)
	require.NoError(t, err)
	addr := netip.MustParseAddrPort("198.18.0.10:80")
	// The token is the one both front-ends issued before they shared
	// this code, so cookies in the wild stay valid.
	m := hmac.New(sha256.New, key)
	m.Write([]byte("lbkit/redirect\x00198.18.0.10:80"))
	want := base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
	assert.Equal(t, want, s.Token(addr))
	assert.Len(t, s.Token(addr), TokenLen)
	assert.Equal(t, "sid="+want+"; Path=/; Max-Age=90; HttpOnly; SameSite=Lax; Secure", s.SetCookie("sid", want))

	p, err := NewCookieSigner("proxy", key, 0, false)
	require.NoError(t, err)
	assert.NotEqual(t, s.Token(addr), p.Token(addr), "the domain separates the products")
	assert.Equal(t, "; Path=/; HttpOnly; SameSite=Lax", p.Attrs)

	_, err = NewCookieSigner("proxy", []byte("short"), 0, false)
	assert.Error(t, err)
	r1, err := NewCookieSigner("proxy", nil, 0, false)
	require.NoError(t, err)
	r2, _ := NewCookieSigner("proxy", nil, 0, false)
	assert.NotEqual(t, r1.Token(addr), r2.Token(addr), "a nil key is random")
}

func TestCutCookie(t *testing.T) {
	line := "a=1;sid=x; b=2 ;  sid=y;sidx=z; sid"
	var got []string
	for v, rest, ok := CutCookie(line, "sid"); ok; v, rest, ok = CutCookie(rest, "sid") {
		got = append(got, v)
	}
	assert.Equal(t, []string{"x", "y"}, got)
	v, ok := cookieValue(line, "b")
	assert.True(t, ok)
	assert.Equal(t, "2", v)
	_, ok = cookieValue(line, "c")
	assert.False(t, ok)
	assert.True(t, ValidCookieName("lbkit_backend"))
	assert.False(t, ValidCookieName("a;b"))
	assert.False(t, ValidCookieName(""))
}
