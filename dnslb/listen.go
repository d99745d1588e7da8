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
// bursts queue instead of being dropped. When addr's port is 0, a free port is chosen for all of them.
// The caller owns the returned sockets (pass them to [Server.Serve]).
func Listen(ctx context.Context, addr string, sockets int) (udp []net.PacketConn, tcp net.Listener, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dnslb: listen address %q: %w", addr, err)
	}
	if sockets < 1 || !reusePortSupported {
		sockets = 1
	}
	lc := net.ListenConfig{Control: reusePort}
	// With port 0 the UDP port the kernel picks may be taken for TCP:
	// try a few times.
	for attempt := 0; ; attempt++ {
		udp, tcp, err = listenOnce(ctx, &lc, host, port, sockets)
		if err == nil || port != "0" || attempt == 10 {
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
