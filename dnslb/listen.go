package dnslb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
)

// Listen opens sockets UDP sockets bound to the same address with
// SO_REUSEPORT (where the platform has it; elsewhere only one), so the
// kernel spreads incoming queries over them, and a TCP listener on the
// same port. UDP socket buffers are raised to 4 MiB where allowed, so
// bursts queue instead of being dropped. When addr's port is 0, a port
// free for UDP and TCP is chosen for all of them. With a fixed port, note
// that SO_REUSEPORT lets another process of the same user bind it too and
// share the queries, as with Knot or NSD. The caller owns the returned
// sockets (pass them to [Server.Serve]). Listen blocks only while binding.
func Listen(ctx context.Context, addr string, sockets int) (udp []net.PacketConn, tcp net.Listener, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dnslb: listen address %q: %w", addr, err)
	}
	if sockets < 1 || !reusePortSupported {
		sockets = 1
	}
	lc := net.ListenConfig{}
	if sockets > 1 {
		lc.Control = reusePort
	}
	if port != "0" {
		return listenOnce(ctx, &lc, host, port, sockets)
	}
	// Port 0: the kernel may hand a socket with SO_REUSEPORT a port that
	// another SO_REUSEPORT group of the same user holds (it would then
	// share that group's traffic). Find a port free for UDP and TCP with
	// plain sockets first, then bind the group to it; retry if it was
	// taken in between.
	var plain net.ListenConfig
	for attempt := 0; ; attempt++ {
		// The probe is TCP: the kernel then picks a port no TCP socket
		// uses, connected ones included (a UDP probe can land on the
		// local port of an outgoing TCP connection, and the listener's
		// bind then fails every time).
		probe, err := plain.Listen(ctx, "tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, nil, fmt.Errorf("dnslb: listen TCP: %w", err)
		}
		p := strconv.Itoa(probe.Addr().(*net.TCPAddr).Port)
		probe.Close()
		udp, tcp, err = listenOnce(ctx, &lc, host, p, sockets)
		if err == nil || attempt == 10 {
			return udp, tcp, err
		}
	}
}

func listenOnce(ctx context.Context, lc *net.ListenConfig, host, port string, sockets int) ([]net.PacketConn, net.Listener, error) {
	var udp []net.PacketConn
	closeAll := func() {
		for _, pc := range udp {
			pc.Close()
		}
	}
	for range sockets {
		pc, err := lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, port))
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("dnslb: listen UDP: %w", err)
		}
		udp = append(udp, pc)
		if uc, ok := pc.(*net.UDPConn); ok {
			growBuffers(uc)
		}
		ua, ok := pc.LocalAddr().(*net.UDPAddr)
		if !ok {
			closeAll()
			return nil, nil, errors.New("dnslb: listen UDP: not a UDP socket")
		}
		port = strconv.Itoa(ua.Port)
	}
	ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("dnslb: listen TCP: %w", err)
	}
	return udp, ln, nil
}
