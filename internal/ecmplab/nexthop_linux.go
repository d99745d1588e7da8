//go:build linux

package ecmplab

import (
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Hashing says how the router spreads flows over the nodes.
type Hashing uint8

const (
	// HashThreshold is the classic multipath route (RTA_MULTIPATH): the
	// hash space is cut into one range per nexthop. Removing a nexthop
	// redraws the ranges, so besides the removed node's flows some flows
	// move between nodes that stayed (removing the first of three moves
	// half of the second's flows to the third).
	HashThreshold Hashing = iota
	// Resilient is a resilient nexthop group (nexthop objects, Linux
	// 5.13+): flows hash into 128 buckets, each owned by a nexthop.
	// Removing a nexthop hands only its buckets to the others; every
	// other flow stays on its node. Hardware routers call this resilient
	// or consistent ECMP.
	Resilient
)

// String returns "hash-threshold" or "resilient".
func (h Hashing) String() string {
	if h == Resilient {
		return "resilient"
	}
	return "hash-threshold"
}

// Netlink numbers of nexthop objects and groups (linux/nexthop.h,
// linux/rtnetlink.h) that x/sys/unix does not define.
const (
	nhaResGroup        = 12 // NHA_RES_GROUP
	nhaResGroupBuckets = 1  // NHA_RES_GROUP_BUCKETS
	nexthopGrpTypeRes  = 1  // NEXTHOP_GRP_TYPE_RES
	rtaNHID            = 30 // RTA_NH_ID
	resBuckets         = 128
	groupID            = 1000 // the group's nexthop id; node i's nexthop is i+1
)

// raw is netlink message data written out by hand.
type raw []byte

func (r raw) Len() int          { return len(r) }
func (r raw) Serialize() []byte { return r }

func u16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// routeResilient points the VIP at a resilient nexthop group of the given
// nodes, creating or replacing node nexthops, the group and the route.
// It runs inside the router's namespace: the netlink socket of each
// request is opened on the calling thread.
func (l *Lab) routeResilient(oif int, nodes []int) error {
	const flags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE | unix.NLM_F_ACK
	// struct nhmsg: family, scope, protocol, resvd, flags.
	nhmsg := func(family byte) raw { return raw{family, 0, unix.RTPROT_STATIC, 0, 0, 0, 0, 0} }
	return l.Router.Do(func() error {
		var group []byte
		for _, n := range nodes {
			id := uint32(n + 1)
			req := nl.NewNetlinkRequest(unix.RTM_NEWNEXTHOP, flags)
			req.AddData(nhmsg(unix.AF_INET))
			req.AddData(nl.NewRtAttr(unix.NHA_ID, u32(id)))
			req.AddData(nl.NewRtAttr(unix.NHA_OIF, u32(uint32(oif))))
			req.AddData(nl.NewRtAttr(unix.NHA_GATEWAY, l.NodeAddr(n).AsSlice()))
			if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
				return fmt.Errorf("ecmplab: nexthop %d via %v: %w", id, l.NodeAddr(n), err)
			}
			// struct nexthop_grp: id, weight-1, two reserved fields.
			group = append(group, u32(id)...)
			group = append(group, 0, 0, 0, 0)
		}
		req := nl.NewNetlinkRequest(unix.RTM_NEWNEXTHOP, flags)
		req.AddData(nhmsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.NHA_ID, u32(groupID)))
		req.AddData(nl.NewRtAttr(unix.NHA_GROUP, group))
		req.AddData(nl.NewRtAttr(unix.NHA_GROUP_TYPE, u16(nexthopGrpTypeRes)))
		res := nl.NewRtAttr(nhaResGroup|unix.NLA_F_NESTED, nil)
		res.AddRtAttr(nhaResGroupBuckets, u16(resBuckets))
		req.AddData(res)
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
			return fmt.Errorf("ecmplab: resilient group of nodes %v: %w", nodes, err)
		}

		req = nl.NewNetlinkRequest(unix.RTM_NEWROUTE, flags)
		msg := nl.NewRtMsg() // main table, boot protocol, universe scope, unicast
		msg.Family, msg.Dst_len = unix.AF_INET, 32
		req.AddData(msg)
		req.AddData(nl.NewRtAttr(unix.RTA_DST, VIP.AsSlice()))
		req.AddData(nl.NewRtAttr(rtaNHID, u32(groupID)))
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
			return fmt.Errorf("ecmplab: route %v via group %d: %w", VIP, groupID, err)
		}
		return nil
	})
}
