package iplb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// drainPoll is how often a draining balancer counts its open flows.
const drainPoll = 100 * time.Millisecond

// conntrackCounter returns a function that counts, in the namespace ns
// (-1: the calling thread's), the open flows whose original destination
// is one of the VIPs it is given: TCP entries from SYN_SENT to LAST_ACK
// (not TIME_WAIT or CLOSE, which are over) and every UDP entry.
func conntrackCounter(ns int) (func(vips map[vipKey]bool) (int, error), func(), error) {
	var h *vnl.Handle
	var err error
	if ns > 0 {
		h, err = vnl.NewHandleAt(netns.NsHandle(ns), unix.NETLINK_NETFILTER)
	} else {
		h, err = vnl.NewHandle(unix.NETLINK_NETFILTER)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("iplb: conntrack netlink: %w", err)
	}
	count := func(vips map[vipKey]bool) (int, error) {
		n := 0
		for _, fam := range []vnl.InetFamily{unix.AF_INET, unix.AF_INET6} {
			flows, err := h.ConntrackTableList(vnl.ConntrackTable, fam)
			for try := 0; errors.Is(err, vnl.ErrDumpInterrupted) && try < 3; try++ {
				// The table changed during the dump, which then misses
				// entries: dump again.
				flows, err = h.ConntrackTableList(vnl.ConntrackTable, fam)
			}
			if err != nil {
				return 0, fmt.Errorf("iplb: read conntrack: %w", err)
			}
			for _, f := range flows {
				dst, ok := netip.AddrFromSlice(f.Forward.DstIP)
				if !ok || !vips[vipKey{netip.AddrPortFrom(dst.Unmap(), f.Forward.DstPort), Proto(f.Forward.Protocol)}] {
					continue
				}
				if tcp, ok := f.ProtoInfo.(*vnl.ProtoInfoTCP); ok && (tcp.State == 0 || tcp.State >= 7) {
					continue // NONE, TIME_WAIT, CLOSE and later: over
				}
				n++
			}
		}
		return n, nil
	}
	return count, h.Close, nil
}

// vipKey is a service's destination.
type vipKey struct {
	addr  netip.AddrPort
	proto Proto
}

// drain stops steering new flows (the prerouting chain is emptied, so a
// new flow to a VIP reaches the balancer itself) while the table stays,
// with the postrouting rules that keep conntrack on (see anchorExprs),
// so conntrack keeps translating the established ones, and waits until none
// of the services' flows is open, or until ctx (Shutdown's), serve
// (Serve's) or kill (closed by Close) ends the wait.
func (b *Balancer) drain(ctx, serve context.Context, kill <-chan struct{}) {
	b.mu.Lock()
	vips := make(map[vipKey]bool, len(b.services))
	for _, s := range b.services {
		vips[vipKey{s.svc.VIP, s.svc.Proto}] = true
	}
	b.mu.Unlock()
	b.conn.FlushChain(b.pre)
	if err := b.conn.Flush(); err != nil {
		b.log.Error("iplb: draining: stop steering new flows", "err", err)
		return
	}
	if b.countFlows == nil {
		return
	}
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for {
		// An error (a dump still interrupted after retries, say) is no
		// evidence that the flows ended: keep waiting, within ctx.
		n, err := b.countFlows(vips)
		switch {
		case err != nil:
			b.log.Warn("iplb: draining: counting open flows", "err", err)
		case n == 0:
			return
		default:
			b.log.Debug("iplb: draining", "open flows", n)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			b.log.Info("iplb: drain cut short", "open flows", n, "err", ctx.Err())
			return
		case <-serve.Done():
			return
		case <-kill:
			return
		}
	}
}
