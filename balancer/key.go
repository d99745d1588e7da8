package balancer

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// KeySource says what a [Key] hashes.
type KeySource uint8

// The sources of a pick key.
const (
	// KeyNone: no key; the policy picks freely.
	KeyNone KeySource = iota
	// KeyClient: the client's address, under a prefix length.
	KeyClient
	// KeyHeader: the first value of a request header.
	KeyHeader
	// KeyCookie: the value of a request cookie.
	KeyCookie
	// KeyPath: the request path, without the query.
	KeyPath
	// KeyQuery: the first value of a query parameter.
	KeyQuery
	// KeyFlow: a connection's 5-tuple (protocol, client and server
	// address and port).
	KeyFlow
)

var keySourceNames = [...]string{"", "client", "header", "cookie", "path", "query", "flow"}

// Key says how a front-end derives the affinity key of a pick
// ([PickInfo.Key]) from the work it is balancing: one value, used by every
// front-end, so any hash-based policy (Maglev, ring hash, rendezvous,
// source hash) keeps the same client, user or object on the same backend
// behind a redirect, a DNS answer, an HTTP or TCP proxy alike. The zero
// value is no key.
//
// A key a front-end cannot see falls back to the client address: a
// header, cookie, path or query key under the TCP proxy, a request
// without the named header or cookie, a flow key in DNS. Keys are values:
// safe to copy and to use from any goroutine. Deriving a PickInfo does not
// allocate, except [HTTPRequest]'s cookie lookup.
type Key struct {
	// Source is what is hashed.
	Source KeySource
	// Name is the header, cookie or query parameter that KeyHeader,
	// KeyCookie and KeyQuery read. Header names are matched without
	// regard to case.
	Name string
	// Bits4 and Bits6 are the prefix lengths under which KeyClient (and
	// the fallbacks to it) hashes IPv4 and IPv6 client addresses: clients
	// in one /24 share a key with Bits4 = 24. Zero means the whole
	// address (32 and 128).
	Bits4, Bits6 int
}

// ParseKey parses the text form of a [Key]:
//
//	""                no key
//	client            the client address
//	client/24         IPv4 clients under /24, IPv6 clients whole
//	client/24,56      IPv4 under /24, IPv6 under /56
//	header:X-User     a header's first value
//	cookie:session    a cookie's value
//	path              the request path
//	query:uid         a query parameter's first value
//	flow              the 5-tuple
func ParseKey(s string) (Key, error) {
	var k Key
	return k, k.UnmarshalText([]byte(s))
}

// MustParseKey is like [ParseKey] but panics on error, for constants in
// examples and tests.
func MustParseKey(s string) Key {
	k, err := ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

// UnmarshalText parses the form [ParseKey] documents.
func (k *Key) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	*k = Key{}
	if s == "" || s == "none" {
		return nil
	}
	src, arg, hasArg := strings.Cut(s, ":")
	if src == "client" || strings.HasPrefix(src, "client/") {
		if hasArg {
			return fmt.Errorf("balancer: key %q: client takes a prefix length (client/24), not a name", s)
		}
		k.Source = KeyClient
		if bits, ok := strings.CutPrefix(src, "client/"); ok {
			b4, b6, two := strings.Cut(bits, ",")
			var err error
			if k.Bits4, err = parseBits(s, b4, 32); err != nil {
				return err
			}
			if two {
				if k.Bits6, err = parseBits(s, b6, 128); err != nil {
					return err
				}
			}
		}
		return nil
	}
	switch src {
	case "header", "cookie", "query":
		if arg == "" {
			return fmt.Errorf("balancer: key %q: %s needs a name (%s:NAME)", s, src, src)
		}
		if strings.ContainsAny(arg, " \t\r\n;,=") {
			return fmt.Errorf("balancer: key %q: invalid name %q", s, arg)
		}
		k.Name = arg
		k.Source = map[string]KeySource{"header": KeyHeader, "cookie": KeyCookie, "query": KeyQuery}[src]
	case "path", "flow":
		if hasArg {
			return fmt.Errorf("balancer: key %q: %s takes no name", s, src)
		}
		k.Source = KeyPath
		if src == "flow" {
			k.Source = KeyFlow
		}
	default:
		return fmt.Errorf("balancer: key %q: want client[/bits[,bits6]], header:NAME, cookie:NAME, path, query:NAME or flow", s)
	}
	return nil
}

func parseBits(key, s string, max int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, fmt.Errorf("balancer: key %q: prefix length %q must be 1–%d", key, s, max)
	}
	return n, nil
}

// String returns the text form of k (see [ParseKey]).
func (k Key) String() string {
	switch k.Source {
	case KeyNone:
		return ""
	case KeyClient:
		switch {
		case k.Bits6 != 0 && k.Bits6 != 128:
			return fmt.Sprintf("client/%d,%d", cmpBits(k.Bits4, 32), k.Bits6)
		case k.Bits4 != 0 && k.Bits4 != 32:
			return fmt.Sprintf("client/%d", k.Bits4)
		}
		return "client"
	case KeyHeader, KeyCookie, KeyQuery:
		return keySourceNames[k.Source] + ":" + k.Name
	case KeyPath, KeyFlow:
		return keySourceNames[k.Source]
	}
	return "invalid(" + strconv.Itoa(int(k.Source)) + ")"
}

func cmpBits(b, def int) int {
	if b == 0 {
		return def
	}
	return b
}

// MarshalText returns the text form of k.
func (k Key) MarshalText() ([]byte, error) {
	if k.Source > KeyFlow {
		return nil, errors.New("balancer: invalid key source " + strconv.Itoa(int(k.Source)))
	}
	return []byte(k.String()), nil
}

// IsZero reports whether k is no key.
func (k Key) IsZero() bool { return k.Source == KeyNone }

// Client returns the PickInfo for a client at address a: the hash of a
// under the key's prefix length for every key but KeyNone, which gives
// no key. Front-ends that see only the client's address (DNS, layer 4
// without a 5-tuple) use it for any key.
func (k Key) Client(a netip.Addr) PickInfo {
	if k.Source == KeyNone || !a.IsValid() {
		return PickInfo{}
	}
	a = a.Unmap()
	bits := k.Bits6
	if a.Is4() {
		bits = k.Bits4
	}
	if bits > 0 && bits < a.BitLen() {
		if p, err := a.Prefix(bits); err == nil {
			a = p.Addr()
		}
	}
	return WithKey(HashAddr(a))
}

// Flow returns the PickInfo for a connection: the hash of the 5-tuple for
// KeyFlow, and [Key.Client] of the source address otherwise.
func (k Key) Flow(proto Proto, src, dst netip.AddrPort) PickInfo {
	if k.Source == KeyFlow {
		return WithKey(HashFlow(uint8(proto), src, dst))
	}
	return k.Client(src.Addr())
}

// KeyRequest is what an HTTP front-end offers a [Key] to hash. Raw
// HTTP/1.1 servers implement it on their parsed request heads without
// allocating; [HTTPRequest] adapts a net/http request.
type KeyRequest interface {
	// ClientAddr is the client's address (after trusted-proxy handling).
	ClientAddr() netip.Addr
	// Header returns the first value of the named header, matched
	// without regard to case.
	Header(name string) ([]byte, bool)
	// Cookie returns the value of the named cookie.
	Cookie(name string) ([]byte, bool)
	// Path returns the request path, without the query.
	Path() []byte
	// Query returns the first value of the named query parameter, as it
	// appears in the request (not unescaped).
	Query(name string) ([]byte, bool)
}

// Request returns the PickInfo for an HTTP request. A header, cookie or
// query parameter that is absent falls back to the client address, so
// requests without it still spread by client rather than all hashing
// alike.
func (k Key) Request(r KeyRequest) PickInfo {
	var v []byte
	ok := false
	switch k.Source {
	case KeyNone:
		return PickInfo{}
	case KeyHeader:
		v, ok = r.Header(k.Name)
	case KeyCookie:
		v, ok = r.Cookie(k.Name)
	case KeyQuery:
		v, ok = r.Query(k.Name)
	case KeyPath:
		v, ok = r.Path(), true
	}
	if ok {
		return WithKey(HashBytes(v))
	}
	return k.Client(r.ClientAddr())
}

// HTTPRequest adapts a net/http request to [KeyRequest], with client as
// the client's address (which the caller derives, after trusted-proxy
// handling). Header and query lookups convert strings to byte slices.
func HTTPRequest(r *http.Request, client netip.Addr) KeyRequest {
	return httpKeyRequest{r, client}
}

type httpKeyRequest struct {
	r      *http.Request
	client netip.Addr
}

func (h httpKeyRequest) ClientAddr() netip.Addr { return h.client }

func (h httpKeyRequest) Header(name string) ([]byte, bool) {
	vs := h.r.Header.Values(name)
	if len(vs) == 0 {
		return nil, false
	}
	return []byte(vs[0]), true
}

func (h httpKeyRequest) Cookie(name string) ([]byte, bool) {
	c, err := h.r.Cookie(name)
	if err != nil {
		return nil, false
	}
	return []byte(c.Value), true
}

func (h httpKeyRequest) Path() []byte {
	if h.r.URL == nil {
		return nil
	}
	return []byte(h.r.URL.EscapedPath())
}

func (h httpKeyRequest) Query(name string) ([]byte, bool) {
	if h.r.URL == nil {
		return nil, false
	}
	q := h.r.URL.RawQuery
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		key, val, _ := strings.Cut(kv, "=")
		if key == name {
			return []byte(val), true
		}
	}
	return nil, false
}
