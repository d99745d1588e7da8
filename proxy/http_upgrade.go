package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// errNoHijack is returned when a 101 answer cannot be passed on because
// the client connection cannot be taken over (HTTP/2, or a middleware
// whose ResponseWriter hides Hijack).
var errNoHijack = errors.New("proxy: client connection does not support upgrades")

// tunnel passes a 101 Switching Protocols response on to the client,
// takes over both connections and copies bytes both ways until both
// directions end (or the proxy is closed). It uses one extra goroutine for
// the client-to-backend direction.
func (h *HTTP) tunnel(w http.ResponseWriter, rq *request, pc *pconn) error {
	head := &pc.head
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		pc.close()
		return errors.Join(errNoHijack, err)
	}
	// Bytes the client sent after its request and the backend after its
	// 101 are already in the buffers: they are copied first.
	bw := pc.bw
	bw.Reset(conn)
	head.writeHeadForUpgrade(bw)
	if err := bw.Flush(); err != nil {
		conn.Close()
		pc.close()
		return nil // the client went away: nothing to answer
	}
	bw.Reset(pc.conn)
	if !h.track(conn, pc.conn) {
		conn.Close()
		pc.close()
		return nil
	}
	defer h.untrack(conn, pc.conn)
	conn.SetDeadline(time.Time{})
	pc.conn.SetDeadline(time.Time{})
	if !rq.deadline.IsZero() {
		conn.SetDeadline(rq.deadline)
		pc.conn.SetDeadline(rq.deadline)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(pc.conn, brw.Reader)
		closeWrite(pc.conn)
	}()
	io.Copy(conn, pc.br)
	closeWrite(conn)
	<-done
	conn.Close()
	pc.close()
	return nil
}

// writeHeadForUpgrade writes the 101 head to the client: the backend's
// end-to-end fields plus Connection: Upgrade and its Upgrade value.
func (h *respHead) writeHeadForUpgrade(w interface {
	WriteString(string) (int, error)
	Write([]byte) (int, error)
}) {
	w.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	for _, f := range h.fields {
		if f.skip {
			continue
		}
		w.Write(h.name(f))
		w.WriteString(": ")
		w.Write(h.value(f))
		w.WriteString("\r\n")
	}
	w.WriteString("Connection: Upgrade\r\nUpgrade: ")
	w.Write(h.value(h.fields[h.upgrade-1]))
	w.WriteString("\r\n\r\n")
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// track records the two ends of a tunnel so Close can end it. It reports
// false when the proxy is closed.
func (h *HTTP) track(a, b net.Conn) bool {
	h.tunMu.Lock()
	defer h.tunMu.Unlock()
	if h.closed {
		return false
	}
	h.tunnels[a] = struct{}{}
	h.tunnels[b] = struct{}{}
	return true
}

func (h *HTTP) untrack(a, b net.Conn) {
	h.tunMu.Lock()
	delete(h.tunnels, a)
	delete(h.tunnels, b)
	h.tunMu.Unlock()
}
