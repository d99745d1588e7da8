package h1

import "unsafe"

// bstr views b as a string without copying. The string is valid while b
// is not modified.
func bstr(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// TokenTable marks the bytes allowed in an HTTP token (RFC 9110 5.6.2).
var TokenTable = alnumTable("!#$%&'*+-.^_`|~")

// alnumTable marks ASCII letters, digits and the bytes of extra.
func alnumTable(extra string) (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range extra {
		t[c] = true
	}
	return t
}

// IsToken reports whether s is a non-empty HTTP token.
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !TokenTable[s[i]] {
			return false
		}
	}
	return true
}

// ValidValueByte reports whether c may appear in a field value: HTAB,
// SP, VCHAR and obs-text. CR, LF, NUL, DEL and other controls may not.
func ValidValueByte(c byte) bool { return c == '\t' || (c >= ' ' && c != 0x7f) }

// ValidValue reports whether every byte of v may appear in a field value.
func ValidValue[T string | []byte](v T) bool {
	for i := 0; i < len(v); i++ {
		if !ValidValueByte(v[i]) {
			return false
		}
	}
	return true
}

// trimOWS trims optional white space (SP, HTAB) from both ends of v.
func trimOWS[T string | []byte](v T) T {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// EqualFold reports whether a and b are equal under ASCII case folding.
func EqualFold[A, B string | []byte](a A, b B) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

// hasPrefixFold reports whether b starts with prefix under ASCII case
// folding.
func hasPrefixFold[T string | []byte](b T, prefix string) bool {
	return len(b) >= len(prefix) && EqualFold(b[:len(prefix)], prefix)
}

// ForEachToken calls fn for each comma-separated element of v, trimmed of
// optional white space. Empty elements are skipped.
func ForEachToken[T string | []byte](v T, fn func(T)) {
	for len(v) > 0 {
		i := 0
		for i < len(v) && v[i] != ',' {
			i++
		}
		if tok := trimOWS(v[:i]); len(tok) > 0 {
			fn(tok)
		}
		if i == len(v) {
			return
		}
		v = v[i+1:]
	}
}

// HasToken reports whether the comma-separated list v holds tok under
// ASCII case folding.
func HasToken[T string | []byte](v T, tok string) bool {
	found := false
	ForEachToken(v, func(t T) {
		if EqualFold(t, tok) {
			found = true
		}
	})
	return found
}

// canonicalize rewrites a token field name in place to its canonical
// form ("content-type" → "Content-Type"), as http.CanonicalHeaderKey does.
func canonicalize(name []byte) {
	upper := true
	for i, c := range name {
		if upper && 'a' <= c && c <= 'z' {
			name[i] = c - 'a' + 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			name[i] = c - 'A' + 'a'
		}
		upper = c == '-'
	}
}

// Unhex returns the value of the hex digit c, or -1.
func Unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}
