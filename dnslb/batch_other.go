//go:build !linux

package dnslb

import "net"

// serveUDPBatch reports false: batched I/O is Linux-only.
func (s *Server) serveUDPBatch(uc *net.UDPConn, w *worker) bool { return false }
