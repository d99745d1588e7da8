package l2lb

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// XDP attachment states of a link (IFLA_XDP_ATTACHED).
const (
	xdpAttachedDriver = 1 // XDP_ATTACHED_DRV
	xdpAttachedMulti  = 4 // XDP_ATTACHED_MULTI: more than one mode
)

// autoMode chooses the mode AttachAuto attaches in: generic on a veth
// whose peer runs no XDP program in driver mode, driver otherwise (Serve
// still falls back to generic if the driver refuses).
//
// Native XDP_TX on a veth hands the frame to the peer's receive queue,
// which takes XDP frames only while an XDP program runs on the peer in
// driver mode; without one the kernel drops every frame the program
// sends, and attaching succeeds all the same.
func (b *Balancer) autoMode() (AttachMode, error) {
	l, err := b.nh.LinkByIndex(b.ifindex)
	if err != nil {
		return 0, fmt.Errorf("l2lb: interface %d: %w", b.ifindex, err)
	}
	if l.Type() != "veth" {
		return AttachDriver, nil
	}
	var peer netlink.Link
	err = b.inNS(func() (err error) {
		peer, err = linkByIndexIn(l.Attrs().ParentIndex, l.Attrs().NetNsID)
		return err
	})
	if err != nil {
		b.log.Warn("l2lb: cannot see the veth's peer; attaching in generic mode", "err", err)
		return AttachGeneric, nil
	}
	if x := peer.Attrs().Xdp; x != nil && (x.AttachMode == xdpAttachedDriver || x.AttachMode == xdpAttachedMulti) {
		return AttachDriver, nil
	}
	b.log.Info("l2lb: the veth's peer runs no XDP program in driver mode, so native XDP_TX would drop every frame; attaching in generic mode",
		"peer", peer.Attrs().Name)
	return AttachGeneric, nil
}

// linkByIndexIn returns the link with index in the namespace that has id
// nsid in the calling thread's namespace (-1: that namespace itself), as
// `ip -target-netnsid` asks for it (Linux 4.20 and later).
func linkByIndexIn(index, nsid int) (netlink.Link, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	if nsid >= 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_TARGET_NETNSID, nl.Uint32Attr(uint32(nsid))))
	}
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, fmt.Errorf("link %d in namespace %d: %w", index, nsid, err)
	}
	if len(msgs) != 1 {
		return nil, errors.New("link not found")
	}
	return netlink.LinkDeserialize(nil, msgs[0])
}
