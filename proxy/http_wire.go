package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/lbkit/lbkit/internal/h1"
)

// Errors of the upstream HTTP/1.1 parser. They are wrapped in
// [ErrUpstreamProtocol] by the forwarding path, so a caller branches on
// that one.
var (
	errStatusLine    = errors.New("proxy: malformed status line")
	errHeaderLine    = errors.New("proxy: malformed header line")
	errHeaderTooBig  = errors.New("proxy: response header too large")
	errContentLength = errors.New("proxy: invalid or conflicting Content-Length")
	errTransferEnc   = errors.New("proxy: unsupported or conflicting Transfer-Encoding")
	errChunked       = errors.New("proxy: malformed chunked encoding")
)

// ErrUpstreamProtocol wraps every violation of HTTP/1.1 found in a
// backend's response: a bad status line or header, conflicting framing
// (Content-Length with Transfer-Encoding, differing Content-Lengths), an
// oversized header, broken chunked encoding. The proxy answers 502 to it.
var ErrUpstreamProtocol = errors.New("proxy: upstream protocol error")

// field is one header field of a parsed head: offsets into the head's
// byte block.
type field struct {
	ns, ne, vs, ve int32
	skip           bool // hop-by-hop: not forwarded
}

// respHead is a parsed response head. Its byte block and field slice are
// reused across responses on one connection.
type respHead struct {
	major, minor int
	status       int
	reason       []byte // subslice of block

	block  []byte  // the header lines, unterminated, back to back
	fields []field // into block

	contentLength int64 // -1 when absent
	chunked       bool
	closeConn     bool // Connection: close, or HTTP/1.0 without keep-alive
	keepAlive     bool // Connection: keep-alive (HTTP/1.0)
	upgrade       int  // index+1 in fields of the Upgrade field, 0 if none
	connFields    int  // how many Connection fields were seen
	clFields      int  // how many Content-Length fields were seen
}

// normalizedCL reports whether the Content-Length fields were dropped from
// the forwarded header because they were a list or repeated: the caller
// then sets the single value.
func (h *respHead) normalizedCL() bool {
	if h.contentLength < 0 {
		return false
	}
	for _, f := range h.fields {
		if !f.skip && h1.EqualFold(h.name(f), "Content-Length") {
			return false
		}
	}
	return true
}

func bytesContains(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}

func (h *respHead) reset() {
	h.major, h.minor, h.status = 0, 0, 0
	h.reason = nil
	h.block = h.block[:0]
	h.fields = h.fields[:0]
	h.contentLength = -1
	h.chunked, h.closeConn, h.keepAlive = false, false, false
	h.upgrade, h.connFields, h.clFields = 0, 0, 0
}

func (h *respHead) name(f field) []byte  { return h.block[f.ns:f.ne] }
func (h *respHead) value(f field) []byte { return h.block[f.vs:f.ve] }

// readLine returns the next CRLF-terminated line without its CRLF,
// appending it to dst when it does not fit bufio's buffer. n counts the
// bytes consumed so far against limit.
func readLine(br *bufio.Reader, scratch *[]byte, n *int, limit int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == nil || err != bufio.ErrBufferFull {
		*n += len(line)
		if *n > limit {
			return nil, errHeaderTooBig
		}
		if err != nil {
			if err == io.EOF && *n > len(line) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		return trimCRLF(line)
	}
	buf := append((*scratch)[:0], line...)
	*n += len(line)
	for {
		if *n > limit {
			return nil, errHeaderTooBig
		}
		line, err = br.ReadSlice('\n')
		*n += len(line)
		buf = append(buf, line...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	*scratch = buf
	if *n > limit {
		return nil, errHeaderTooBig
	}
	return trimCRLF(buf)
}

func trimCRLF(line []byte) ([]byte, error) {
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, errHeaderLine // bare LF
	}
	return line[:len(line)-2], nil
}

// readHead reads one response head (status line and header fields) from
// br into h, at most limit bytes. It is strict: CRLF line ends only, no
// obs-fold, token field names, no control bytes in values, one consistent
// Content-Length, Transfer-Encoding "chunked" only and never together with
// Content-Length. HTTP/1.0 and HTTP/1.1 are accepted.
func readHead(br *bufio.Reader, h *respHead, scratch *[]byte, limit int) error {
	h.reset()
	n := 0
	line, err := readLine(br, scratch, &n, limit)
	if err != nil {
		if err == errHeaderLine {
			return errStatusLine
		}
		return err
	}
	if err := h.parseStatus(line); err != nil {
		return err
	}
	for {
		line, err := readLine(br, scratch, &n, limit)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if len(line) == 0 {
			break
		}
		if err := h.addField(line); err != nil {
			return err
		}
	}
	return h.finish()
}

// parseStatus parses "HTTP/1.x SP 3DIGIT SP reason" (the SP and reason
// may be absent) into h, copying the reason into h.block.
func (h *respHead) parseStatus(line []byte) error {
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[8] != ' ' {
		return errStatusLine
	}
	switch line[7] {
	case '0':
		h.major, h.minor = 1, 0
	case '1':
		h.major, h.minor = 1, 1
	default:
		return errStatusLine
	}
	s := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return errStatusLine
		}
		s = s*10 + int(c-'0')
	}
	if s < 100 {
		return errStatusLine
	}
	h.status = s
	rest := line[12:]
	if len(rest) > 0 {
		if rest[0] != ' ' {
			return errStatusLine
		}
		rest = rest[1:]
		for _, c := range rest {
			if !h1.ValidValueByte(c) {
				return errStatusLine
			}
		}
	}
	h.block = append(h.block, rest...)
	h.reason = h.block[:len(rest):len(rest)]
	return nil
}

// addField parses one "name: value" line and records it, noting what
// framing and connection management need.
func (h *respHead) addField(line []byte) error {
	colon := -1
	for i, c := range line {
		if c == ':' {
			colon = i
			break
		}
		if !h1.TokenTable[c] {
			return errHeaderLine // includes obs-fold (leading SP/HTAB) and SP before ':'
		}
	}
	if colon <= 0 {
		return errHeaderLine
	}
	v := line[colon+1:]
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	for _, c := range v {
		if !h1.ValidValueByte(c) {
			return errHeaderLine
		}
	}
	base := int32(len(h.block))
	h.block = append(h.block, line[:colon]...)
	h.block = append(h.block, v...)
	f := field{ns: base, ne: base + int32(colon), vs: base + int32(colon), ve: base + int32(colon+len(v))}
	name := line[:colon]
	switch {
	case h1.EqualFold(name, "Content-Length"):
		if err := h.addContentLength(v); err != nil {
			return err
		}
		h.clFields++
		// A list ("5, 5") or a repeated field is forwarded as one clean
		// value (see normalizedCL).
		f.skip = h.clFields > 1 || bytesContains(v, ',')
		if f.skip && h.clFields > 1 {
			for i := range h.fields {
				if h1.EqualFold(h.name(h.fields[i]), "Content-Length") {
					h.fields[i].skip = true
				}
			}
		}
	case h1.EqualFold(name, "Transfer-Encoding"):
		if h.chunked || !h1.EqualFold(v, "chunked") {
			return errTransferEnc
		}
		h.chunked = true
		f.skip = true
	case h1.EqualFold(name, "Connection"):
		h.connFields++
		h1.ForEachToken(v, func(tok []byte) {
			switch {
			case h1.EqualFold(tok, "close"):
				h.closeConn = true
			case h1.EqualFold(tok, "keep-alive"):
				h.keepAlive = true
			}
		})
		f.skip = true
	case h1.EqualFold(name, "Upgrade"):
		h.upgrade = len(h.fields) + 1
		f.skip = true
	case isHopByHop(name):
		f.skip = true
	}
	h.fields = append(h.fields, f)
	return nil
}

// addContentLength records one Content-Length value (possibly a
// comma-separated list of equal values, RFC 9110 8.6).
func (h *respHead) addContentLength(v []byte) error {
	var bad bool
	h1.ForEachToken(v, func(tok []byte) {
		if len(tok) == 0 || len(tok) > 18 {
			bad = true
			return
		}
		var n int64
		for _, c := range tok {
			if c < '0' || c > '9' {
				bad = true
				return
			}
			n = n*10 + int64(c-'0')
		}
		if h.contentLength >= 0 && h.contentLength != n {
			bad = true
			return
		}
		h.contentLength = n
	})
	if bad || len(v) == 0 {
		return errContentLength
	}
	return nil
}

// finish checks the head as a whole once every field is in.
func (h *respHead) finish() error {
	if h.chunked {
		if h.contentLength >= 0 {
			return errTransferEnc // RFC 9112 6.3: a likely smuggling attempt
		}
		if h.minor == 0 {
			return errTransferEnc // Transfer-Encoding in HTTP/1.0 is faulty framing
		}
	}
	if h.minor == 0 && !h.keepAlive {
		h.closeConn = true
	}
	// Fields named in Connection are hop-by-hop too.
	if h.connFields > 0 {
		for i := range h.fields {
			f := &h.fields[i]
			if !h1.EqualFold(h.name(*f), "Connection") {
				continue
			}
			h1.ForEachToken(h.value(*f), func(tok []byte) {
				for j := range h.fields {
					if h1.EqualFold(h.name(h.fields[j]), tok) {
						h.fields[j].skip = true
					}
				}
			})
		}
	}
	return nil
}

// bodyless reports whether a response to method with this status has no
// body whatever its header says.
func (h *respHead) bodyless(head bool) bool {
	return head || h.status == 204 || h.status == 304 || (h.status >= 100 && h.status < 200)
}

// copyTo adds the head's end-to-end fields to dst. It allocates one
// string for all names and values and one slice of values; a field that
// repeats a name already in dst appends to it.
func (h *respHead) copyTo(dst http.Header) {
	count := 0
	for _, f := range h.fields {
		if !f.skip {
			count++
		}
	}
	if count == 0 {
		return
	}
	blk := string(h.block)
	vals := make([]string, count)
	i := 0
	for _, f := range h.fields {
		if f.skip {
			continue
		}
		key := canonicalKey(blk[f.ns:f.ne])
		v := blk[f.vs:f.ve]
		if old, ok := dst[key]; ok {
			dst[key] = append(old, v)
			continue
		}
		vals[i] = v
		dst[key] = vals[i : i+1 : i+1]
		i++
	}
}

// canonicalKey returns the canonical form of a header name, without
// allocating when s is canonical already (the common case).
func canonicalKey(s string) string {
	upper := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return http.CanonicalHeaderKey(s)
		}
		upper = c == '-'
	}
	return s
}

// writeHead serialises h as a response head; with the fields' skip flags
// ignored it is the inverse of readHead for the heads it accepts (used by
// the fuzz test's round trip and by the upgrade path).
func (h *respHead) writeHead(w *bufio.Writer, all bool) {
	w.WriteString("HTTP/1.")
	w.WriteByte('0' + byte(h.minor))
	w.WriteByte(' ')
	w.WriteString(strconv.Itoa(h.status))
	if len(h.reason) > 0 {
		w.WriteByte(' ')
		w.Write(h.reason)
	}
	w.WriteString("\r\n")
	for _, f := range h.fields {
		if f.skip && !all {
			continue
		}
		w.Write(h.name(f))
		w.WriteString(": ")
		w.Write(h.value(f))
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
}

// isHopByHop reports whether a header name is hop-by-hop by definition
// (RFC 9110 7.6.1, plus the de-facto Keep-Alive and Proxy-Connection).
func isHopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return h1.EqualFold(name, "TE")
	case 7:
		return h1.EqualFold(name, "Trailer") || h1.EqualFold(name, "Upgrade")
	case 10:
		return h1.EqualFold(name, "Connection") || h1.EqualFold(name, "Keep-Alive")
	case 16:
		return h1.EqualFold(name, "Proxy-Connection")
	case 17:
		return h1.EqualFold(name, "Transfer-Encoding")
	}
	return false
}

// chunkedReader decodes a chunked body (RFC 9112 7.1) from br. Trailer
// fields go to trailer (with http.TrailerPrefix) when it is non-nil.
type chunkedReader struct {
	br      *bufio.Reader
	left    int64 // bytes left in the current chunk
	started bool  // inside a chunk: a CRLF follows its data
	done    bool
	scratch *[]byte
	limit   int
	trailer http.Header
	th      respHead
}

// Read reads decoded body bytes into p. It returns io.EOF after the last
// chunk and its trailer section.
func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	if c.left == 0 {
		if c.started {
			if err := c.crlf(); err != nil {
				return 0, err
			}
		}
		if err := c.size(); err != nil {
			return 0, err
		}
		if c.left == 0 {
			if err := c.trailers(); err != nil {
				return 0, err
			}
			c.done = true
			return 0, io.EOF
		}
		c.started = true
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (c *chunkedReader) crlf() error {
	b, err := c.br.Peek(2)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errChunked
	}
	c.br.Discard(2)
	return nil
}

// size parses "1*HEXDIG [ chunk-ext ] CRLF".
func (c *chunkedReader) size() error {
	n := 0
	line, err := readLine(c.br, c.scratch, &n, 4096)
	if err != nil {
		switch err {
		case errHeaderLine, errHeaderTooBig:
			return errChunked
		case io.EOF:
			return io.ErrUnexpectedEOF // the last chunk never came
		}
		return err
	}
	v, err := parseChunkSize(line)
	if err != nil {
		return err
	}
	c.left = v
	return nil
}

// parseChunkSize parses a chunk-size line without its CRLF:
// "1*HEXDIG [ chunk-ext ]".
func parseChunkSize(line []byte) (int64, error) {
	var v int64
	i := 0
	for ; i < len(line); i++ {
		d := h1.Unhex(line[i])
		if d < 0 {
			break
		}
		if i >= 15 {
			return 0, errChunked
		}
		v = v<<4 | int64(d)
	}
	if i == 0 {
		return 0, errChunked
	}
	rest := line[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if len(rest) > 0 && rest[0] != ';' {
		return 0, errChunked
	}
	for _, b := range rest {
		if !h1.ValidValueByte(b) {
			return 0, errChunked
		}
	}
	return v, nil
}

func (c *chunkedReader) trailers() error {
	c.th.reset()
	n := 0
	for {
		line, err := readLine(c.br, c.scratch, &n, c.limit)
		if err != nil {
			switch err {
			case errHeaderLine:
				return errChunked
			case io.EOF:
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if len(line) == 0 {
			break
		}
		if err := c.th.addField(line); err != nil {
			return err
		}
	}
	if c.trailer == nil {
		return nil
	}
	for _, f := range c.th.fields {
		name := c.th.name(f)
		if f.skip || h1.EqualFold(name, "Content-Length") {
			continue
		}
		c.trailer.Add(http.TrailerPrefix+string(name), string(c.th.value(f)))
	}
	return nil
}

// copyBufPool holds the buffers bodies are copied through.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// protoErr wraps a parser error as an upstream protocol error.
func protoErr(err error) error {
	switch err {
	case errStatusLine, errHeaderLine, errHeaderTooBig, errContentLength, errTransferEnc, errChunked:
		return fmt.Errorf("%w: %w", ErrUpstreamProtocol, err)
	}
	return err
}
