package h1

import (
	"net/http"
	"net/netip"
)

// authorityTable marks the bytes of a reg-name host: unreserved and
// sub-delims (RFC 3986 3.2.2), without percent-encoding.
var authorityTable = alnumTable("-._~!$&'()*+,;=")

// parseTarget validates h.Target and records where its parts are. The
// forms (RFC 9112 3.2): origin ("/p?q"), asterisk ("*", OPTIONS only),
// authority (CONNECT only: "host:port") and absolute ("http://host/p?q",
// http or https). A target parses when its path's percent-escapes are
// well formed and, in the authority and absolute forms, the authority is
// a non-empty host (a reg-name without percent-encoding, or a bracketed
// IPv6 literal) with an optional port and no user info.
func (h *Head) parseTarget() bool {
	t := h.Target
	n := len(t)
	h.authStart, h.authEnd, h.pathStart, h.queryStart = 0, 0, n, n
	switch {
	case t[0] == '/':
		h.pathStart = 0
	case t == "*":
		return h.Method == http.MethodOptions
	case h.Method == http.MethodConnect:
		h.authEnd = n
		return validAuthority(t, true)
	default:
		i := 0
		switch {
		case hasPrefixFold(t, "http://"):
			i = len("http://")
		case hasPrefixFold(t, "https://"):
			i = len("https://")
		default:
			return false
		}
		j := i
		for j < n && t[j] != '/' && t[j] != '?' {
			j++
		}
		if !validAuthority(t[i:j], false) {
			return false
		}
		h.authStart, h.authEnd, h.pathStart = i, j, j
	}
	q := h.pathStart
	for q < n && t[q] != '?' {
		if t[q] == '%' && (q+2 >= n || Unhex(t[q+1]) < 0 || Unhex(t[q+2]) < 0) {
			return false
		}
		q++
	}
	h.queryStart = q
	return true
}

// validAuthority reports whether a is host[:port] with a non-empty host;
// needPort requires the port (CONNECT).
func validAuthority(a string, needPort bool) bool {
	i := 0
	if len(a) > 0 && a[0] == '[' {
		i = 1
		for i < len(a) && (Unhex(a[i]) >= 0 || a[i] == ':' || a[i] == '.') {
			i++
		}
		if i >= len(a) || a[i] != ']' {
			return false
		}
		if ip, err := netip.ParseAddr(a[1:i]); err != nil || !ip.Is6() {
			return false
		}
		i++
	} else {
		for i < len(a) && authorityTable[a[i]] {
			i++
		}
		if i == 0 {
			return false
		}
	}
	if i == len(a) {
		return !needPort
	}
	if a[i] != ':' {
		return false // user info, percent-encoding or other bytes
	}
	port := a[i+1:]
	if needPort && port == "" {
		return false
	}
	for j := 0; j < len(port); j++ {
		if port[j] < '0' || port[j] > '9' {
			return false
		}
	}
	return true
}

// Authority returns the authority of an absolute-form or authority-form
// target, or "" for the origin and asterisk forms.
func (h *Head) Authority() string { return h.Target[h.authStart:h.authEnd] }

// Path returns the target's path without the query: "/" for an absolute
// form without a path, "" for the asterisk and authority forms.
func (h *Head) Path() string {
	if h.authEnd > 0 && h.pathStart == h.queryStart && h.Method != http.MethodConnect {
		return "/"
	}
	return h.Target[h.pathStart:h.queryStart]
}

// RawQuery returns the target's query, after the '?', and whether it has
// one.
func (h *Head) RawQuery() (string, bool) {
	if h.queryStart == len(h.Target) {
		return "", false
	}
	return h.Target[h.queryStart+1:], true
}

// Query returns the raw (still escaped) value of the first query
// parameter named name.
func (h *Head) Query(name string) (string, bool) {
	q, ok := h.RawQuery()
	if !ok {
		return "", false
	}
	for len(q) > 0 {
		i := 0
		for i < len(q) && q[i] != '&' {
			i++
		}
		kv := q[:i]
		if len(kv) >= len(name) && kv[:len(name)] == name {
			if len(kv) == len(name) {
				return "", true
			}
			if kv[len(name)] == '=' {
				return kv[len(name)+1:], true
			}
		}
		if i == len(q) {
			break
		}
		q = q[i+1:]
	}
	return "", false
}

// Cookie returns the value of the first cookie named name in the head's
// Cookie fields.
func (h *Head) Cookie(name string) (string, bool) {
	for _, f := range h.Fields {
		if f.Name != "Cookie" {
			continue
		}
		if v, ok := cookieValue(f.Value, name); ok {
			return v, true
		}
	}
	return "", false
}
