//go:build !linux

package dnslb

import "net"

// serveUDPBatch reports false: batched I/O is Linux-only.
func (s *Server) serveUDPBatch(uc *net.UDPConn, w *worker) bool { return false }

// growBuffers enlarges uc's socket buffers as far as the system allows.
func growBuffers(uc *net.UDPConn) {
	uc.SetReadBuffer(4 << 20)
	uc.SetWriteBuffer(4 << 20)
}
