package looppeers

import (
	"strings"
	"time"
)

// zeroTime asks h1.AppendDate for the current time.
var zeroTime time.Time

// pathSafe and querySafe are the bytes a Location carries unescaped, as
// in redirect's location.go.
var pathSafe, querySafe [256]bool

func init() {
	for c := 'a'; c <= 'z'; c++ {
		pathSafe[c] = true
		pathSafe[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		pathSafe[c] = true
	}
	for _, c := range []byte("-._~!$&'()*+,;=:@/%") {
		pathSafe[c] = true
	}
	querySafe = pathSafe
	querySafe['?'] = true
}

const hexUpper = "0123456789ABCDEF"

// appendEscaped appends s with every byte outside safe percent-encoded.
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

func trimSlashes(p string) string {
	for len(p) > 0 && p[0] == '/' {
		p = p[1:]
	}
	return p
}

// hasDotSegment reports whether path has a "." or ".." segment, plain or
// percent-encoded.
func hasDotSegment(path string) bool {
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
