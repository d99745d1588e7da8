package h1

import "net/http"

// parseTarget checks h.Target's form and records where its parts are.
// The forms (RFC 9112 3.2): origin ("/p?q"), asterisk ("*", OPTIONS
// only), authority (CONNECT only: "host:port") and absolute
// ("http://host/p?q", http or https).
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
	default:
		i := 0
		switch {
		case HasPrefixFold(t, "http://"):
			i = len("http://")
		case HasPrefixFold(t, "https://"):
			i = len("https://")
		default:
			return false
		}
		j := i
		for j < n && t[j] != '/' && t[j] != '?' {
			j++
		}
		h.authStart, h.authEnd, h.pathStart = i, j, j
	}
	q := h.pathStart
	for q < n && t[q] != '?' {
		q++
	}
	h.queryStart = q
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
		if v, ok := CookieValue(f.Value, name); ok {
			return v, true
		}
	}
	return "", false
}
