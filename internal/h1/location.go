package h1

import "strings"

// locSafe marks the bytes copied into a Location as they are, for a path
// (index 0) and a query (index 1): RFC 3986 unreserved characters,
// sub-delimiters, ':', '@', '/' and '%' (the input is already escaped),
// and '?' in a query. Everything else, control characters and white space
// first, is percent-encoded.
var locSafe [2][256]bool

func init() {
	p := &locSafe[0]
	for c := 'a'; c <= 'z'; c++ {
		p[c] = true
		p[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		p[c] = true
	}
	for _, c := range []byte("-._~!$&'()*+,;=:@/%") {
		p[c] = true
	}
	locSafe[1] = *p
	locSafe[1]['?'] = true
}

const hexUpper = "0123456789ABCDEF"

// LocationLen returns the length of the Location AppendLocation appends
// for these parts.
func LocationLen(base, path, query string, hasQuery bool) int {
	n := len(base) + 1 + escapedLen(strings.TrimLeft(path, "/"), &locSafe[0])
	if hasQuery {
		n += 1 + escapedLen(query, &locSafe[1])
	}
	return n
}

// AppendLocation appends base + "/" + path + "?" + query (the query only
// when hasQuery) to b, with the path's leading slashes collapsed into the
// one after base, so no "//" follows the base and no relative reading of
// the Location can turn the path into a host, and every byte outside the
// URL-safe set percent-encoded.
func AppendLocation(b []byte, base, path, query string, hasQuery bool) []byte {
	b = append(b, base...)
	b = append(b, '/')
	b = appendEscaped(b, strings.TrimLeft(path, "/"), &locSafe[0])
	if hasQuery {
		b = append(b, '?')
		b = appendEscaped(b, query, &locSafe[1])
	}
	return b
}

func escapedLen(s string, safe *[256]bool) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		if !safe[s[i]] {
			n += 2
		}
	}
	return n
}

func appendEscaped(b []byte, s string, safe *[256]bool) []byte {
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if safe[c] {
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, '%', hexUpper[c>>4], hexUpper[c&15])
		start = i + 1
	}
	return append(b, s[start:]...)
}

// HasDotSegment reports whether path has a "." or ".." segment, plain or
// percent-encoded: a client resolving a Location with it could leave the
// base URL's path prefix.
func HasDotSegment(path string) bool {
	for len(path) > 0 {
		var seg string
		seg, path, _ = strings.Cut(path, "/")
		if isDotSegment(seg) {
			return true
		}
	}
	return false
}

func isDotSegment(s string) bool {
	if len(s) == 0 || len(s) > 6 {
		return false
	}
	dots := 0
	for i := 0; i < len(s); {
		switch {
		case s[i] == '.':
			i++
		case i+3 <= len(s) && s[i] == '%' && s[i+1] == '2' && (s[i+2] == 'e' || s[i+2] == 'E'):
			i += 3
		default:
			return false
		}
		dots++
	}
	return dots <= 2
}
