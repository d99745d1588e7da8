package proxy

import (
	"bufio"
	"net/http"
	"strconv"
	"unsafe"
)

// reqHead is a client's request head as [Server] parses it. Its strings
// point into the connection's head buffer and live until the next
// request is read.
type reqHead struct {
	method, target string
	minor          int // HTTP/1.minor, 0 or 1
	fields         []reqField
	host           string
	hosts          int
	contentLength  int64 // -1 when absent
	chunked        bool
	closeConn      bool // Connection: close
	keepAlive      bool // Connection: keep-alive
	expectContinue bool // Expect: 100-continue
}

// reqField is one header field; the name is in canonical form.
type reqField struct{ name, value string }

func (rh *reqHead) reset() {
	fields := rh.fields[:0]
	*rh = reqHead{fields: fields, contentLength: -1}
}

// keep reports whether the client asked to keep the connection open.
func (rh *reqHead) keep() bool {
	if rh.minor == 0 {
		return rh.keepAlive && !rh.closeConn
	}
	return !rh.closeConn
}

// bstr views b as a string without copying.
func bstr(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// parseRequestHead parses a whole request head (request line, header
// lines and the empty line, each ending in CRLF) into rh. It rewrites
// header names in head to their canonical form; rh's strings point into
// head. It returns 0, or the status to refuse the request with: 400 for
// anything malformed or ambiguous (bare LF, obs-fold, white space before
// a colon, invalid bytes, a missing or repeated Host in HTTP/1.1,
// Content-Length with Transfer-Encoding, differing Content-Lengths,
// Transfer-Encoding in HTTP/1.0), 501 for a transfer coding other than a
// single chunked, 417 for an expectation other than 100-continue and 505
// for a version other than HTTP/1.0 and 1.1.
func parseRequestHead(head []byte, rh *reqHead) int {
	rh.reset()
	line, rest, ok := cutCRLF(head)
	if !ok {
		return http.StatusBadRequest
	}
	if code := rh.parseRequestLine(line); code != 0 {
		return code
	}
	var te, expect bool
	for {
		line, rest, ok = cutCRLF(rest)
		if !ok {
			return http.StatusBadRequest
		}
		if len(line) == 0 {
			break
		}
		colon := -1
		for i, c := range line {
			if c == ':' {
				colon = i
				break
			}
			if !tokenTable[c] {
				return http.StatusBadRequest // obs-fold, SP before ':', bad bytes
			}
		}
		if colon <= 0 {
			return http.StatusBadRequest
		}
		name := line[:colon]
		canonicalize(name)
		v := trimOWS(line[colon+1:])
		for _, c := range v {
			if !validValueByte(c) {
				return http.StatusBadRequest
			}
		}
		f := reqField{name: bstr(name), value: bstr(v)}
		switch f.name {
		case "Host":
			rh.hosts++
			rh.host = f.value
		case "Content-Length":
			if !rh.addContentLength(v) {
				return http.StatusBadRequest
			}
		case "Transfer-Encoding":
			if te || rh.minor == 0 {
				return http.StatusBadRequest
			}
			te = true
			if !asciiEqualFold(v, "chunked") {
				return http.StatusNotImplemented
			}
			rh.chunked = true
		case "Connection":
			forEachToken(v, func(tok []byte) {
				switch {
				case asciiEqualFold(tok, "close"):
					rh.closeConn = true
				case asciiEqualFold(tok, "keep-alive"):
					rh.keepAlive = true
				}
			})
		case "Expect":
			if expect || !asciiEqualFold(v, "100-continue") {
				return http.StatusExpectationFailed
			}
			expect = true
		}
		rh.fields = append(rh.fields, f)
	}
	if len(rest) != 0 {
		return http.StatusBadRequest
	}
	if rh.hosts > 1 || rh.minor == 1 && rh.hosts == 0 {
		return http.StatusBadRequest
	}
	if rh.chunked && rh.contentLength >= 0 {
		return http.StatusBadRequest // CL.TE / TE.CL smuggling
	}
	rh.expectContinue = expect && rh.minor == 1 && (rh.chunked || rh.contentLength > 0)
	return 0
}

// parseRequestLine parses "method SP request-target SP HTTP/1.x".
func (rh *reqHead) parseRequestLine(line []byte) int {
	sp := 0
	for sp < len(line) && tokenTable[line[sp]] {
		sp++
	}
	if sp == 0 || sp >= len(line) || line[sp] != ' ' {
		return http.StatusBadRequest
	}
	method := line[:sp]
	rest := line[sp+1:]
	end := 0
	for end < len(rest) && rest[end] > ' ' && rest[end] != 0x7f {
		end++
	}
	if end == 0 || end >= len(rest) || rest[end] != ' ' {
		return http.StatusBadRequest
	}
	target, proto := rest[:end], rest[end+1:]
	if len(proto) != 8 || string(proto[:5]) != "HTTP/" || proto[6] != '.' {
		return http.StatusBadRequest
	}
	major, minor := proto[5], proto[7]
	if major < '0' || major > '9' || minor < '0' || minor > '9' {
		return http.StatusBadRequest
	}
	if major != '1' || minor > '1' {
		return http.StatusHTTPVersionNotSupported
	}
	switch {
	case target[0] == '/':
	case len(target) == 1 && target[0] == '*':
		if string(method) != http.MethodOptions {
			return http.StatusBadRequest
		}
	case string(method) == http.MethodConnect:
	default:
		if !hasPrefixFoldBytes(target, "http://") && !hasPrefixFoldBytes(target, "https://") {
			return http.StatusBadRequest
		}
	}
	rh.method, rh.target, rh.minor = bstr(method), bstr(target), int(minor-'0')
	return 0
}

// addContentLength records one Content-Length value, a list of equal
// values included; it reports false for an invalid or differing value.
func (rh *reqHead) addContentLength(v []byte) bool {
	for len(v) > 0 {
		var part []byte
		part, v = cutComma(v)
		part = trimOWS(part)
		if len(part) == 0 || len(part) > 18 {
			return false
		}
		var n int64
		for _, c := range part {
			if c < '0' || c > '9' {
				return false
			}
			n = n*10 + int64(c-'0')
		}
		if rh.contentLength >= 0 && rh.contentLength != n {
			return false
		}
		rh.contentLength = n
	}
	return rh.contentLength >= 0
}

func cutComma(v []byte) (before, after []byte) {
	for i, c := range v {
		if c == ',' {
			return v[:i], v[i+1:]
		}
	}
	return v, nil
}

// cutCRLF splits b after its first line. A line must end in CRLF and
// contain no other CR or LF.
func cutCRLF(b []byte) (line, rest []byte, ok bool) {
	for i, c := range b {
		switch c {
		case '\r':
			if i+1 < len(b) && b[i+1] == '\n' {
				return b[:i], b[i+2:], true
			}
			return nil, nil, false
		case '\n':
			return nil, nil, false
		}
	}
	return nil, nil, false
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// canonicalize rewrites a token header name in place to its canonical
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

func hasPrefixFoldBytes(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && asciiEqualFold(b[:len(prefix)], prefix)
}

// appendTo serialises rh as a request head; for heads parseRequestHead
// accepted, parsing the result gives rh again (the fuzz test's property).
func (rh *reqHead) appendTo(b []byte) []byte {
	b = append(b, rh.method...)
	b = append(b, ' ')
	b = append(b, rh.target...)
	b = append(b, " HTTP/1."...)
	b = strconv.AppendInt(b, int64(rh.minor), 10)
	b = append(b, "\r\n"...)
	for _, f := range rh.fields {
		b = append(b, f.name...)
		b = append(b, ": "...)
		b = append(b, f.value...)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// writeStatusLine writes "HTTP/1.1 code reason\r\n".
func writeStatusLine(bw *bufio.Writer, code int, reason []byte) {
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	bw.WriteByte(' ')
	if len(reason) > 0 {
		bw.Write(reason)
	} else {
		bw.WriteString(http.StatusText(code))
	}
	bw.WriteString("\r\n")
}
