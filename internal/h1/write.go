package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// statusLines holds "HTTP/1.1 code reason\r\n" for every code from 100
// to 599.
var statusLines = func() (t [600]string) {
	for c := 100; c < len(t); c++ {
		t[c] = "HTTP/1.1 " + strconv.Itoa(c) + " " + http.StatusText(c) + "\r\n"
	}
	return t
}()

// StatusLine returns "HTTP/1.1 code reason\r\n" with the standard reason
// (empty for unknown codes). code must be in 100–599.
func StatusLine(code int) string { return statusLines[code] }

// WriteStatusLine writes "HTTP/1.1 code reason\r\n": reason as given, or
// the standard one when empty.
func WriteStatusLine(bw *bufio.Writer, code int, reason []byte) {
	if len(reason) == 0 && code >= 100 && code < len(statusLines) {
		bw.WriteString(statusLines[code])
		return
	}
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	bw.WriteByte(' ')
	bw.Write(reason)
	bw.WriteString("\r\n")
}

// dateCache holds the Date field line for the latest second formatted.
var dateCache atomic.Pointer[dateLine]

type dateLine struct {
	sec  int64
	line []byte
}

// AppendDate appends "Date: <IMF-fixdate>\r\n" for now (the zero time
// means the current time), formatting at most once a second. It is safe
// for concurrent use.
func AppendDate(b []byte, now time.Time) []byte {
	if now.IsZero() {
		now = time.Now()
	}
	// Only move forward: connections whose batch arrived a second ago
	// reuse the newer line instead of reformatting back and forth.
	d := dateCache.Load()
	if d == nil || now.Unix() > d.sec {
		line := now.UTC().AppendFormat([]byte("Date: "), http.TimeFormat)
		d = &dateLine{sec: now.Unix(), line: append(line, "\r\n"...)}
		dateCache.Store(d)
	}
	return append(b, d.line...)
}

// LingerTimeout and LingerBytes bound [LingerClose].
const (
	LingerTimeout = time.Second
	LingerBytes   = 256 << 10
)

// LingerClose half-closes c and reads (from r, which reads c) what the
// client still sends, for up to LingerTimeout and LingerBytes, so the
// response just written is not lost to a reset caused by unread request
// data. The caller closes c afterwards.
func LingerClose(c net.Conn, r io.Reader) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(LingerTimeout))
	io.CopyN(io.Discard, r, LingerBytes)
}
