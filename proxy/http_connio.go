package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// connIO sits between a backend connection and its bufio reader and
// writer to save a system call per request. A bodyless request's bytes
// are not written when the writer flushes; the next read writes them and
// then waits for the response before reading, inside one RawConn.Read.
// Go's net package would instead write, then try a read that fails with
// EAGAIN, then wait. Waiting is correct because RawConn.Read resets the
// poller's readiness before our function runs, and the request is written
// only after that: the response's arrival cannot be missed.
type connIO struct {
	conn net.Conn
	rc   syscall.RawConn // nil: plain reads and writes (TLS)

	deferNext bool   // capture the next Write instead of writing it
	deferred  []byte // captured request bytes (bufio's buffer), unsent

	// State of the RawConn.Read callback.
	p       []byte
	n       int
	err     error
	waited  bool // the request is out; the callback reads
	partial bool // the socket took part of the request: finish normally
	fn      func(fd uintptr) bool
}

func newConnIO(c net.Conn) *connIO {
	cio := &connIO{conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			cio.rc = rc
		}
	}
	cio.fn = cio.step
	return cio
}

// Write writes p, or captures it when a deferred write was asked for.
func (c *connIO) Write(p []byte) (int, error) {
	if c.deferNext && c.rc != nil {
		c.deferNext = false
		c.deferred = p
		return len(p), nil
	}
	return c.conn.Write(p)
}

// Read reads into p, first sending a deferred request.
func (c *connIO) Read(p []byte) (int, error) {
	if c.deferred == nil {
		return c.conn.Read(p)
	}
	c.p, c.n, c.err, c.waited, c.partial = p, 0, nil, false, false
	err := c.rc.Read(c.fn)
	c.p = nil
	if err != nil {
		c.deferred = nil
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: err}
	}
	if c.partial {
		rest := c.deferred
		c.deferred = nil
		// The write deadline may be an earlier request's; the read
		// deadline bounds this exchange.
		c.conn.SetWriteDeadline(time.Time{})
		if _, err := c.conn.Write(rest); err != nil {
			return 0, err
		}
		return c.conn.Read(p)
	}
	c.deferred = nil
	if c.err != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", c.err)}
	}
	if c.n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return c.n, nil
}

// step is the RawConn.Read callback: write the request, then wait, then
// read.
func (c *connIO) step(fd uintptr) bool {
	if !c.waited {
		for len(c.deferred) > 0 {
			n, err := syscall.Write(int(fd), c.deferred)
			if n > 0 {
				c.deferred = c.deferred[n:]
			}
			switch err {
			case nil:
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				c.partial = true
				return true
			default:
				c.err = err
				return true
			}
		}
		c.waited = true
		return false // wait until the response is readable
	}
	for {
		n, err := syscall.Read(int(fd), c.p)
		switch err {
		case nil:
			c.n = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.err = err
			return true
		}
	}
}

// reset drops a captured request that was never sent.
func (c *connIO) reset() {
	c.deferNext = false
	c.deferred = nil
}
