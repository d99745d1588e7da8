// Command tcpproxy shows lbkit's layer-4 proxy on loopback: it starts two
// echo backends and an address where nothing listens, proxies a few client
// connections (the dead address is skipped by retrying another backend),
// shows a half-closed request still getting its reply and the PROXY
// protocol header a backend receives, drains the proxy and exits.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/lbkit/lbkit/balancer"
	"github.com/lbkit/lbkit/balancer/roundrobin"
	"github.com/lbkit/lbkit/proxyproto"
	"github.com/lbkit/lbkit/tcpproxy"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tcpproxy example:", err)
		os.Exit(1)
	}
}

// backend serves each connection with serve until ln is closed.
func backend(serve func(net.Conn)) (net.Listener, netip.AddrPort, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(c)
			}()
		}
	}()
	return ln, netip.MustParseAddrPort(ln.Addr().String()), nil
}

// run runs the example and writes what it sees to w.
func run(w io.Writer) error {
	var backends []balancer.Backend
	for _, name := range []string{"alpha", "beta"} {
		ln, addr, err := backend(func(c net.Conn) {
			br := bufio.NewReader(c)
			h, err := proxyproto.Read(br)
			if err != nil {
				return
			}
			data, _ := io.ReadAll(br) // until the client half-closes
			fmt.Fprintf(c, "%s got %q from %v", name, data, h.Source)
		})
		if err != nil {
			return err
		}
		defer ln.Close()
		backends = append(backends, balancer.Backend{Addr: addr})
	}
	// Nothing listens here: dials fail and the proxy tries another backend.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	deadAddr := netip.MustParseAddrPort(dead.Addr().String())
	dead.Close()
	backends = append(backends, balancer.Backend{Addr: deadAddr})

	// The pool is the one list of backends; the proxy picks from it and
	// never closes it.
	pool, err := balancer.New(balancer.Config{Name: "echo", Builder: roundrobin.Builder{}})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.Set(backends); err != nil {
		return err
	}
	p, err := tcpproxy.New(tcpproxy.Config{
		Pool:          pool,
		ProxyProtocol: proxyproto.V2,
		Logger:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(context.Background(), ln) }()
	// An early return closes the proxy; the normal path drains it below.
	drained := false
	defer func() {
		if !drained {
			p.Close()
			<-served
		}
	}()

	// Four clients, and more until the dead address has had its turn
	// (round robin gets there within three when the picks share a
	// counter shard; see the roundrobin package).
	deadEp := p.Pool().Endpoint(deadAddr)
	for i := 0; i < 4 || deadEp.Requests() == 0; i++ {
		if i == 12 {
			return fmt.Errorf("%v was not picked for %d connections", deadAddr, i)
		}
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, strings.Repeat("ab", i+1))
		c.(*net.TCPConn).CloseWrite() // half-close: the reply still comes back
		reply, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "client %d (%v): %s\n", i, c.LocalAddr(), reply)
	}
	fmt.Fprintln(w, "failed dials to", deadAddr, "→", deadEp.Failures(), "(each retried on a live backend)")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	drained = true
	err = p.Shutdown(ctx)
	if err := <-served; err != nil {
		return err
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "drained")
	return nil
}
