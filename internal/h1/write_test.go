package h1

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStatusLines(t *testing.T) {
	assert.Equal(t, "HTTP/1.1 302 Found\r\n", StatusLine(302))
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	WriteStatusLine(bw, 404, nil)
	WriteStatusLine(bw, 299, []byte("Fine"))
	WriteStatusLine(bw, 700, nil)
	bw.Flush()
	assert.Equal(t, "HTTP/1.1 404 Not Found\r\nHTTP/1.1 299 Fine\r\nHTTP/1.1 700 \r\n", b.String())
}

func TestAppendDate(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	assert.Equal(t, "Date: Wed, 02 Jan 2030 03:04:05 GMT\r\n", string(AppendDate(nil, now)))
	// A connection whose batch arrived a second earlier gets the newer
	// line rather than a reformat.
	assert.Equal(t, "Date: Wed, 02 Jan 2030 03:04:05 GMT\r\n", string(AppendDate(nil, now.Add(-time.Second))))
	assert.Zero(t, testing.AllocsPerRun(100, func() { AppendDate(make([]byte, 0, 64)[:0], now) }))
}

// TestLingerClose: the peer sees the response and then the end of the
// stream, although it sent bytes the server never read.
func TestLingerClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		br.Peek(1)
		c.Write([]byte("answer"))
		LingerClose(c, br)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write(bytes.Repeat([]byte("x"), 64<<10))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	got, err := readAll(c)
	require.NoError(t, err)
	assert.Equal(t, "answer", got)
	<-done
}

func readAll(c net.Conn) (string, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(c)
	return b.String(), err
}
