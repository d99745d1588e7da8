package h1

import (
	"bufio"
	"net/http"
	"strconv"
)

// Head is a parsed request head. The zero value is ready for
// [Head.Parse]; reuse one per connection so its field slice is kept. Its
// strings point into the buffer it was parsed from.
type Head struct {
	// Method and Target are the request line's method and request-target.
	Method, Target string
	// Minor is the minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
	Minor int
	// Fields are the header fields in order, names in canonical form.
	Fields []Field
	// Host is the Host field's value ("" when absent).
	Host string
	// ContentLength is the body's length, -1 when the head has no
	// Content-Length.
	ContentLength int64
	// Chunked reports Transfer-Encoding: chunked.
	Chunked bool
	// ExpectContinue reports "Expect: 100-continue" on an HTTP/1.1
	// request with a body: the client waits for 100 Continue.
	ExpectContinue bool

	// Where the request-target's parts start and end (see Path, Query and
	// Authority).
	authStart, authEnd, pathStart, queryStart int

	hosts     int
	closeTok  bool // Connection: close
	keepAlive bool // Connection: keep-alive
}

// Field is one header field of a [Head].
type Field struct{ Name, Value string }

func (h *Head) reset() {
	fields := h.Fields[:0]
	*h = Head{Fields: fields, ContentLength: -1}
}

// KeepAlive reports whether the client lets the connection stay open
// after this request: HTTP/1.1 without "Connection: close", HTTP/1.0 with
// "Connection: keep-alive".
func (h *Head) KeepAlive() bool {
	if h.Minor == 0 {
		return h.keepAlive && !h.closeTok
	}
	return !h.closeTok
}

// HasBody reports whether a body follows the head.
func (h *Head) HasBody() bool { return h.Chunked || h.ContentLength > 0 }

// Header returns the value of the first field named name (ASCII case
// ignored).
func (h *Head) Header(name string) (string, bool) {
	for _, f := range h.Fields {
		if EqualFold(f.Name, name) {
			return f.Value, true
		}
	}
	return "", false
}

// Parse parses a whole request head (request line, field lines and the
// empty line, each ending in CRLF) into h. It rewrites field names in
// head to their canonical form; h's strings point into head. It returns
// 0, or the status to refuse the request with (see the package
// documentation).
func (h *Head) Parse(head []byte) int {
	h.reset()
	line, rest, ok := cutCRLF(head)
	if !ok {
		return http.StatusBadRequest
	}
	if code := h.parseRequestLine(line); code != 0 {
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
			if !TokenTable[c] {
				return http.StatusBadRequest // obs-fold, SP before ':', bad bytes
			}
		}
		if colon <= 0 {
			return http.StatusBadRequest
		}
		name := line[:colon]
		canonicalize(name)
		v := trimOWS(line[colon+1:])
		if !ValidValue(v) {
			return http.StatusBadRequest
		}
		f := Field{Name: bstr(name), Value: bstr(v)}
		switch f.Name {
		case "Host":
			h.hosts++
			h.Host = f.Value
		case "Content-Length":
			if !h.addContentLength(v) {
				return http.StatusBadRequest
			}
		case "Transfer-Encoding":
			if te || h.Minor == 0 {
				return http.StatusBadRequest
			}
			te = true
			if !EqualFold(v, "chunked") {
				return http.StatusNotImplemented
			}
			h.Chunked = true
		case "Connection":
			ForEachToken(v, func(tok []byte) {
				switch {
				case EqualFold(tok, "close"):
					h.closeTok = true
				case EqualFold(tok, "keep-alive"):
					h.keepAlive = true
				}
			})
		case "Expect":
			if expect || !EqualFold(v, "100-continue") {
				return http.StatusExpectationFailed
			}
			expect = true
		}
		h.Fields = append(h.Fields, f)
	}
	if len(rest) != 0 {
		return http.StatusBadRequest
	}
	if h.hosts > 1 || h.Minor == 1 && h.hosts == 0 {
		return http.StatusBadRequest
	}
	if h.Chunked && h.ContentLength >= 0 {
		return http.StatusBadRequest // CL.TE / TE.CL smuggling
	}
	h.ExpectContinue = expect && h.Minor == 1 && h.HasBody()
	return 0
}

// parseRequestLine parses "method SP request-target SP HTTP/1.x".
func (h *Head) parseRequestLine(line []byte) int {
	sp := 0
	for sp < len(line) && TokenTable[line[sp]] {
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
	h.Method, h.Target, h.Minor = bstr(method), bstr(target), int(minor-'0')
	if !h.parseTarget() {
		return http.StatusBadRequest
	}
	return 0
}

// addContentLength records one Content-Length value, a list of equal
// values included; it reports false for an invalid or differing value.
func (h *Head) addContentLength(v []byte) bool {
	for len(v) > 0 {
		var part []byte
		part, v = cutComma(v)
		n, ok := parseContentLength(trimOWS(part))
		if !ok || h.ContentLength >= 0 && h.ContentLength != n {
			return false
		}
		h.ContentLength = n
	}
	return h.ContentLength >= 0
}

// parseContentLength parses one Content-Length value: 1 to 18 digits.
func parseContentLength[T string | []byte](v T) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
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

// AppendTo serialises h as a request head; for heads Parse accepted,
// parsing the result gives h again.
func (h *Head) AppendTo(b []byte) []byte {
	b = append(b, h.Method...)
	b = append(b, ' ')
	b = append(b, h.Target...)
	b = append(b, " HTTP/1."...)
	b = strconv.AppendInt(b, int64(h.Minor), 10)
	b = append(b, "\r\n"...)
	for _, f := range h.Fields {
		b = append(b, f.Name...)
		b = append(b, ": "...)
		b = append(b, f.Value...)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// ReadHead waits until br holds a whole request head, through its empty
// line, and returns it without consuming it: the caller parses it in
// place and then discards len(head) bytes. It calls partial (when not
// nil) once if the head did not arrive whole, before reading more (a
// server sets its read deadline there, so most requests set none). It
// returns a status to refuse the request with — 400 for a bare LF, 414
// when the request line does not fit br, 431 when the head does not —
// or the read error.
func ReadHead(br *bufio.Reader, partial func()) (head []byte, status int, err error) {
	checked := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		for i := checked; i < len(buf); i++ {
			if buf[i] != '\n' {
				continue
			}
			if i == 0 || buf[i-1] != '\r' {
				return nil, http.StatusBadRequest, nil // bare LF
			}
			if i >= 3 && buf[i-2] == '\n' {
				return buf[:i+1], 0, nil
			}
		}
		checked = len(buf)
		if len(buf) >= br.Size() {
			for _, c := range buf {
				if c == '\n' {
					return nil, http.StatusRequestHeaderFieldsTooLarge, nil
				}
			}
			return nil, http.StatusRequestURITooLong, nil
		}
		if partial != nil {
			partial()
			partial = nil
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, 0, err
		}
	}
}
