package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
)

// chunkFeed decodes a chunked body (RFC 9112 7.1) handed to it in pieces
// as they arrive, for the event loop, which cannot wait inside a read as
// chunkedReader does. It accepts exactly what chunkedReader accepts.
type chunkFeed struct {
	state   int
	left    int64  // data bytes left in the current chunk
	line    []byte // the size line, or the trailer section, collected so far
	limit   int    // bound of the trailer section
	trailer http.Header
}

// States of a chunkFeed.
const (
	cfSize    = iota // reading a chunk-size line
	cfData           // inside a chunk's data
	cfCR             // the CR after a chunk's data
	cfLF             // the LF after it
	cfTrailer        // reading the trailer section
	cfDone           // the body ended
)

// maxChunkLine bounds a chunk-size line, as chunkedReader does.
const maxChunkLine = 4096

func (f *chunkFeed) reset(limit int, trailer http.Header) {
	*f = chunkFeed{line: f.line[:0], limit: limit, trailer: trailer}
}

// done reports whether the whole body, trailers included, was fed.
func (f *chunkFeed) done() bool { return f.state == cfDone }

// feed decodes p, passing chunk data to data as it is found. It returns
// how many bytes of p it used: all of them, unless the body ended inside
// p. Errors are errChunked (or errHeaderTooBig and the trailer parser's),
// and whatever data returned.
func (f *chunkFeed) feed(p []byte, data func([]byte) error) (int, error) {
	i := 0
	for i < len(p) && f.state != cfDone {
		switch f.state {
		case cfSize:
			j := bytes.IndexByte(p[i:], '\n')
			if j < 0 {
				if len(f.line)+len(p)-i > maxChunkLine {
					return i, errChunked
				}
				f.line = append(f.line, p[i:]...)
				return len(p), nil
			}
			f.line = append(f.line, p[i:i+j+1]...)
			i += j + 1
			if len(f.line) > maxChunkLine {
				return i, errChunked
			}
			line, err := trimCRLF(f.line)
			if err != nil {
				return i, errChunked
			}
			v, err := parseChunkSize(line)
			if err != nil {
				return i, err
			}
			f.line = f.line[:0]
			f.left = v
			if v == 0 {
				f.state = cfTrailer
			} else {
				f.state = cfData
			}
		case cfData:
			n := len(p) - i
			if int64(n) > f.left {
				n = int(f.left)
			}
			if err := data(p[i : i+n]); err != nil {
				return i, err
			}
			i += n
			if f.left -= int64(n); f.left == 0 {
				f.state = cfCR
			}
		case cfCR, cfLF:
			want := byte('\r')
			if f.state == cfLF {
				want = '\n'
			}
			if p[i] != want {
				return i, errChunked
			}
			i++
			if f.state++; f.state > cfLF {
				f.state = cfSize
			}
		case cfTrailer:
			// Collect the section up to its empty line, then parse it as
			// chunkedReader would.
			for i < len(p) {
				c := p[i]
				i++
				f.line = append(f.line, c)
				if len(f.line) > f.limit {
					return i, errHeaderTooBig
				}
				if c != '\n' {
					continue
				}
				n := len(f.line)
				if n <= 2 || f.line[n-2] == '\n' || n >= 3 && f.line[n-2] == '\r' && f.line[n-3] == '\n' {
					if err := f.trailers(); err != nil {
						return i, err
					}
					f.state = cfDone
					break
				}
			}
		}
	}
	return i, nil
}

// trailers parses the collected trailer section.
func (f *chunkFeed) trailers() error {
	if len(f.line) == 2 && f.line[0] == '\r' {
		return nil // none: the common case, without allocating
	}
	var scratch []byte
	cr := chunkedReader{br: bufio.NewReaderSize(bytes.NewReader(f.line), max(len(f.line), 16)), scratch: &scratch, limit: f.limit, trailer: f.trailer}
	err := cr.trailers()
	if err == io.ErrUnexpectedEOF {
		err = errChunked
	}
	return err
}
