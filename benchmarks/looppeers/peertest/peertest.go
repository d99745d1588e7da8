// Package peertest checks a running loop peer against redirect.Server:
// the same requests, sent over loopback, must get the same bytes (Date
// aside), and a keep-alive connection must keep being answered.
package peertest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/redirect"
)

// Backend is the one backend the peer under test and the reference
// redirect.Server redirect to: with one, round robin has no start to
// differ in.
var Backend = netip.MustParseAddrPort("127.0.0.1:18081")

// closer ends a conversation that would otherwise stay open.
const closer = "GET /end HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"

// Cases are request streams, each sent on its own connection; the
// server's answer is read until it closes the connection.
var Cases = map[string]string{
	"get":         "GET /static/app.js?v=42 HTTP/1.1\r\nHost: b\r\n\r\n" + closer,
	"pipelined":   "GET /a HTTP/1.1\r\nHost: b\r\n\r\nHEAD /b?x=1 HTTP/1.1\r\nHost: b\r\n\r\nGET /c HTTP/1.1\r\nHost: b\r\n\r\n" + closer,
	"close":       "GET /x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: b\r\n\r\n",
	"http10":      "GET /y HTTP/1.0\r\n\r\n",
	"http10 keep": "GET /y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + closer,
	"escaped":     "GET /a%20b//c?x=%41&y=<z> HTTP/1.1\r\nHost: b\r\n\r\n" + closer,
	"leading //":  "GET //evil.example/x HTTP/1.1\r\nHost: b\r\n\r\n" + closer,
	"absolute":    "GET http://h/p?q HTTP/1.1\r\nHost: b\r\n\r\n" + closer,
	"asterisk":    "OPTIONS * HTTP/1.1\r\nHost: b\r\n\r\n" + closer,
	"post body":   "POST /y HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc" + closer,
	"big body":    "POST /y HTTP/1.1\r\nHost: b\r\nContent-Length: 100000\r\n\r\n",
	"chunked":     "POST /y HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n",
	"expect":      "PUT /y HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
	"dot segment": "GET /a/../b HTTP/1.1\r\nHost: b\r\n\r\n" + closer,
	"no host":     "GET /y HTTP/1.1\r\n\r\n",
	"bare LF":     "GET /y HTTP/1.1\nHost: b\r\n\r\n",
	"two hosts":   "GET /y HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n",
	"version":     "GET /y HTTP/2.0\r\nHost: b\r\n\r\n",
	"connect":     "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
	"te and cl":   "POST /y HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
}

var date = regexp.MustCompile(`Date: [^\r]*\r\n`)

// Converse sends req on a new connection to addr and returns all it
// gets back until the server closes, with Date fields blanked.
func Converse(addr, req string) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return got, fmt.Errorf("peertest: after %q: %w", got, err)
	}
	return NormalizeDate(got), nil
}

// NormalizeDate blanks the Date fields in b.
func NormalizeDate(b []byte) []byte {
	return date.ReplaceAll(b, []byte("Date: -\r\n"))
}

// Reference serves redirect.Server over Backend on loopback for the rest
// of the test and returns its address.
func Reference(t *testing.T) string {
	t.Helper()
	pool := balancer.MustNew(balancer.Config{Builder: roundrobin.Builder{}})
	t.Cleanup(func() { pool.Close() })
	require.NoError(t, pool.Set([]balancer.Backend{{Addr: Backend}}))
	log := slog.New(slog.DiscardHandler)
	h, err := redirect.New(redirect.Config{Pool: pool, Logger: log})
	require.NoError(t, err)
	srv, err := redirect.NewServer(redirect.ServerConfig{Handler: h, Logger: log})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return ln.Addr().String()
}

// Compare sends every case to the peer at addr and to a reference
// redirect.Server and requires the same answers.
func Compare(t *testing.T, addr string) {
	t.Helper()
	ref := Reference(t)
	for name, req := range Cases {
		want, err := Converse(ref, req)
		require.NoError(t, err, "%s: redirect.Server", name)
		require.NotEmpty(t, want, name)
		got, err := Converse(addr, req)
		require.NoError(t, err, name)
		assert.Equal(t, string(want), string(got), name)
	}
}

// RoundTrips makes n requests one after the other on one keep-alive
// connection to addr, each answered within a second.
func RoundTrips(t *testing.T, addr string, n int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	req := []byte("GET /static/app.js?v=42 HTTP/1.1\r\nHost: b\r\n\r\n")
	end := []byte("\r\n\r\n")
	buf := make([]byte, 4096)
	for i := range n {
		c.SetDeadline(time.Now().Add(time.Second))
		_, err := c.Write(req)
		require.NoError(t, err, "request %d", i)
		got := 0
		for !bytes.HasSuffix(buf[:got], end) {
			k, err := c.Read(buf[got:])
			require.NoError(t, err, "request %d: answer so far %q", i, buf[:got])
			got += k
		}
		require.True(t, bytes.HasPrefix(buf, []byte("HTTP/1.1 302 Found\r\n")), "request %d: %q", i, buf[:got])
	}
}

// The request SplitBody sends in two parts.
const (
	splitHead = "POST /form HTTP/1.1\r\nHost: b\r\nContent-Length: 10\r\n\r\nabc"
	splitRest = "defghij" + closer
)

// SplitBody requires the peer at addr to skip a request body that
// arrives over two reads: it sends a request with part of its body,
// waits for the answer (the peers answer before the body is skipped,
// unlike redirect.Server, which answers once it skipped it), then sends
// the rest of the body and a last request. All it gets back must be what
// redirect.Server sends for the whole stream.
func SplitBody(t *testing.T, addr string) {
	t.Helper()
	want, err := Converse(Reference(t), splitHead+splitRest)
	require.NoError(t, err, "redirect.Server")
	require.Contains(t, string(want), "Location: http://"+Backend.String()+"/end\r\n")

	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.WriteString(c, splitHead)
	require.NoError(t, err)
	got := make([]byte, 0, 512)
	for !bytes.HasSuffix(got, []byte("\r\n\r\n")) {
		k, err := c.Read(got[len(got):cap(got)])
		require.NoError(t, err, "answer so far %q", got)
		got = got[:len(got)+k]
	}
	_, err = io.WriteString(c, splitRest)
	require.NoError(t, err)
	rest, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, string(want), string(NormalizeDate(append(got, rest...))))
}

// Serve serves a peer on listen, redirecting to backends, until stop is
// closed; it closes ready once it listens.
type Serve func(listen string, backends []netip.AddrPort, stop <-chan struct{}, ready chan<- struct{}) error

// Start runs serve on a free loopback port until the test ends and
// returns the address.
func Start(t *testing.T, serve Serve) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	stop, ready, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- serve(addr, []netip.AddrPort{Backend}, stop, ready)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(stop)
		require.NoError(t, <-done)
	})
	return addr
}

// Run checks the peer that serve serves: it answers as redirect.Server
// does, one connection's requests keep being answered (each after the
// last), and a request body that arrives over two reads is skipped.
func Run(t *testing.T, serve Serve) {
	t.Run("SameAnswers", func(t *testing.T) { Compare(t, Start(t, serve)) })
	t.Run("KeepAlive", func(t *testing.T) { RoundTrips(t, Start(t, serve), 5000) })
	t.Run("SplitBody", func(t *testing.T) { SplitBody(t, Start(t, serve)) })
}
