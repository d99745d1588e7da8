package proxy

import (
	"bufio"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/lbkit/lbkit/internal/h1"
)

// skipRequestHeader reports whether a request header is not copied as is:
// hop-by-hop headers, headers the proxy writes itself (framing, the
// forwarding headers) and Expect (the proxy sends the body at once).
func skipRequestHeader(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Content-Length", "Host", "Expect",
		"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded":
		return true
	}
	return false
}

// writeRequest writes the request head and body to pc and flushes. The
// head is written field by field from r.Header, skipping hop-by-hop
// headers and those named in Connection, and adding the forwarding
// headers; nothing is allocated for it.
func (h *HTTP) writeRequest(pc *pconn, rq *request) error {
	if err := h.writeHead(pc.bw, rq); err != nil {
		return err
	}
	r, bw := rq.r, pc.bw
	if !rq.hasBody {
		writeNoBody(bw, r.Method)
		// The head goes out with the first read of the response (connIO).
		pc.io.deferNext = true
		return bw.Flush()
	}
	if rq.buffered != nil {
		writeBuffered(bw, rq.buffered)
		return bw.Flush()
	}
	if rq.consumed {
		return errBodyConsumed
	}
	rq.consumed = true
	if r.ContentLength > 0 {
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), r.ContentLength, 10))
		bw.WriteString("\r\n\r\n")
		if err := copyN(bw, r.Body, r.ContentLength); err != nil {
			return err
		}
		return bw.Flush()
	}
	bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	if err := copyChunked(bw, r.Body); err != nil {
		return err
	}
	// Request trailers are known once the body is read.
	for k, vv := range r.Trailer {
		k = strings.TrimPrefix(k, http.TrailerPrefix) // as [Server] receives them
		if !h1.IsToken(k) || isHopByHop([]byte(k)) {
			continue
		}
		if err := writeFields(bw, k, vv); err != nil {
			return err
		}
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

// writeHead writes the request line and the header fields of rq, up to
// (not including) the body's framing fields and the empty line: the
// end-to-end fields of the client's request, the forwarding fields, Via
// and the Upgrade fields.
func (h *HTTP) writeHead(bw *bufio.Writer, rq *request) error {
	r := rq.r
	uri := r.RequestURI
	if uri == "" || (uri[0] != '/' && uri != "*") {
		uri = r.URL.RequestURI()
	}
	if !h1.ValidValue(uri) || !h1.IsToken(r.Method) || containsSpace(uri) {
		return errBadRequest
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	if !h1.ValidValue(host) {
		return errBadRequest
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")

	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if skipRequestHeader(k) || (len(conn) > 0 && headerHasToken(conn, k)) {
			continue
		}
		if !h1.IsToken(k) {
			return errBadRequest
		}
		if k == "Cookie" && len(vv) > 1 {
			// HTTP/2 splits cookies; HTTP/1.1 wants one line (RFC 9113 8.2.3).
			bw.WriteString("Cookie: ")
			for i, v := range vv {
				if !h1.ValidValue(v) {
					return errBadRequest
				}
				if i > 0 {
					bw.WriteString("; ")
				}
				bw.WriteString(v)
			}
			bw.WriteString("\r\n")
			continue
		}
		if err := writeFields(bw, k, vv); err != nil {
			return err
		}
	}
	if err := h.writeForwarded(bw, rq, rq.clientHost); err != nil {
		return err
	}
	if h.via != "" {
		bw.WriteString("Via: ")
		writeProto(bw, r)
		bw.WriteByte(' ')
		bw.WriteString(h.via)
		bw.WriteString("\r\n")
	}
	if rq.upgrade != "" {
		if !h1.ValidValue(rq.upgrade) {
			return errBadRequest
		}
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.WriteString(rq.upgrade)
		bw.WriteString("\r\n")
	}
	return nil
}

// writeFields writes a field line "name: value" for each of vals; a
// value with bytes a field may not hold refuses the request.
func writeFields(bw *bufio.Writer, name string, vals []string) error {
	for _, v := range vals {
		if !h1.ValidValue(v) {
			return errBadRequest
		}
		bw.WriteString(name)
		bw.WriteString(": ")
		bw.WriteString(v)
		bw.WriteString("\r\n")
	}
	return nil
}

// writeNoBody ends the head of a request without a body.
func writeNoBody(bw *bufio.Writer, method string) {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
}

// writeBuffered ends a request head with the length of body, and writes
// the body.
func writeBuffered(bw *bufio.Writer, body []byte) {
	bw.WriteString("Content-Length: ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(body)), 10))
	bw.WriteString("\r\n\r\n")
	bw.Write(body)
}

// clientBodyError wraps a failure to read the client's request body: the
// client's fault (400), not the backend's.
type clientBodyError struct{ err error }

func (e clientBodyError) Error() string { return "proxy: reading request body: " + e.err.Error() }
func (e clientBodyError) Unwrap() error { return e.err }

// errBodyConsumed guards against sending a body twice.
var errBodyConsumed = errorString("proxy: request body already sent")

type errorString string

func (e errorString) Error() string { return string(e) }

func containsSpace(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' {
			return true
		}
	}
	return false
}

func writeProto(bw *bufio.Writer, r *http.Request) {
	if r.ProtoMajor >= 2 {
		bw.WriteString(strconv.Itoa(r.ProtoMajor))
		return
	}
	bw.WriteString("1.")
	bw.WriteString(strconv.Itoa(r.ProtoMinor))
}

// writeForwarded writes X-Forwarded-For, -Proto, -Host and Forwarded.
// From a trusted peer the received values are kept and extended; from
// any other peer they are replaced.
func (h *HTTP) writeForwarded(bw *bufio.Writer, rq *request, host string) error {
	r := rq.r
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	xff := r.Header["X-Forwarded-For"]
	bw.WriteString("X-Forwarded-For: ")
	if rq.trusted && len(xff) > 0 {
		for _, v := range xff {
			if !h1.ValidValue(v) {
				return errBadRequest
			}
			bw.WriteString(v)
			bw.WriteString(", ")
		}
	}
	writeAddr(bw, rq.peer)
	bw.WriteString("\r\n")

	for _, f := range [...]struct{ name, ours string }{{"X-Forwarded-Proto", proto}, {"X-Forwarded-Host", host}} {
		v := f.ours
		if got := r.Header[f.name]; rq.trusted && len(got) == 1 && got[0] != "" && h1.ValidValue(got[0]) {
			v = got[0]
		}
		bw.WriteString(f.name)
		bw.WriteString(": ")
		bw.WriteString(v)
		bw.WriteString("\r\n")
	}

	bw.WriteString("Forwarded: ")
	if fw := r.Header["Forwarded"]; rq.trusted && len(fw) > 0 {
		for _, v := range fw {
			if !h1.ValidValue(v) {
				return errBadRequest
			}
			bw.WriteString(v)
			bw.WriteString(", ")
		}
	}
	bw.WriteString("for=")
	switch {
	case rq.peer.Is6():
		bw.WriteString(`"[`)
		writeAddr(bw, rq.peer)
		bw.WriteString(`]"`)
	case rq.peer.IsValid():
		writeAddr(bw, rq.peer)
	default:
		bw.WriteString("unknown")
	}
	bw.WriteString(`;host="`)
	for i := 0; i < len(host); i++ {
		if c := host[i]; c == '"' || c == '\\' {
			bw.WriteByte('\\')
		}
		bw.WriteByte(host[i])
	}
	bw.WriteString(`";proto=`)
	bw.WriteString(proto)
	bw.WriteString("\r\n")
	return nil
}

func writeAddr(bw *bufio.Writer, a netip.Addr) {
	if !a.IsValid() {
		bw.WriteString("unknown")
		return
	}
	bw.Write(a.AppendTo(bw.AvailableBuffer()))
}

// copyN copies exactly n bytes from src to bw through a pooled buffer.
func copyN(bw *bufio.Writer, src io.Reader, n int64) error {
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	for n > 0 {
		p := buf
		if int64(len(p)) > n {
			p = p[:n]
		}
		m, err := src.Read(p)
		if err != nil && err != io.EOF {
			err = clientBodyError{err}
		}
		if m > 0 {
			n -= int64(m)
			if _, werr := bw.Write(p[:m]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			if n > 0 {
				return io.ErrUnexpectedEOF
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// copyChunked copies src to bw in chunked encoding, ending with the last
// chunk ("0" CRLF) but not the trailer section.
func copyChunked(bw *bufio.Writer, src io.Reader) error {
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	for {
		m, err := src.Read(buf)
		if err != nil && err != io.EOF {
			err = clientBodyError{err}
		}
		if m > 0 {
			bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(m), 16))
			bw.WriteString("\r\n")
			bw.Write(buf[:m])
			if _, werr := bw.WriteString("\r\n"); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			_, werr := bw.WriteString("0\r\n")
			return werr
		}
		if err != nil {
			return err
		}
	}
}
