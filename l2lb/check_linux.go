package l2lb

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// CheckBackend checks, inside the backend's network namespace, that it is
// set up to take frames for vip from the balancer and answer the client
// directly (see the package documentation):
//
//   - vip is on the loopback interface (so the backend accepts the frames),
//   - for an IPv4 vip, arp_ignore is 1 and arp_announce is 2 (so it
//     neither answers ARP for the VIP nor uses it as an ARP source; the
//     effective value of each is the larger of "all" and the interface's,
//     checked on every interface that is up besides lo),
//   - rp_filter is not strict (1) on those interfaces (the effective value
//     is the larger of "all" and the interface's; 0 or 2 pass).
//
// do runs its argument inside the backend's namespace (netlab's Host.Do
// fits); nil runs it in the calling thread's. CheckBackend returns nil, a
// *[SetupError] naming every problem, or another error if it could not
// look.
func CheckBackend(do func(func() error) error, vip netip.Addr) error {
	if !vip.IsValid() {
		return errors.New("l2lb: CheckBackend: invalid VIP")
	}
	vip = vip.Unmap()
	if do == nil {
		do = func(f func() error) error { return f() }
	}
	var problems []string
	err := do(func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("l2lb: CheckBackend: lo: %w", err)
		}
		fam := netlink.FAMILY_V4
		if vip.Is6() {
			fam = netlink.FAMILY_V6
		}
		addrs, err := h.AddrList(lo, fam)
		if err != nil {
			return fmt.Errorf("l2lb: CheckBackend: addresses of lo: %w", err)
		}
		onLo := false
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == vip {
				onLo = true
			}
		}
		if !onLo {
			problems = append(problems, fmt.Sprintf("VIP %v is not on lo: add it (ip addr add %v/%d dev lo), or the backend drops the frames", vip, vip, vip.BitLen()))
		}
		if vip.Is6() {
			return nil
		}
		links, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("l2lb: CheckBackend: links: %w", err)
		}
		all := func(key string) int { v, _ := readConf("all", key); return v }
		for _, l := range links {
			name := l.Attrs().Name
			if name == "lo" || l.Attrs().Flags&1 == 0 { // net.FlagUp
				continue
			}
			eff := func(key string) (int, string) {
				v, err := readConf(name, key)
				if err != nil {
					return -1, err.Error()
				}
				a := all(key)
				return max(a, v), fmt.Sprintf("net.ipv4.conf.all.%s=%d, net.ipv4.conf.%s.%s=%d", key, a, name, key, v)
			}
			if v, why := eff("arp_ignore"); v != 1 {
				problems = append(problems, fmt.Sprintf("%s: arp_ignore is %d (%s); set net.ipv4.conf.all.arp_ignore=1 (and %s's to at most 1), or the backend answers ARP for the VIP and steals it from the balancer", name, v, why, name))
			}
			if v, why := eff("arp_announce"); v != 2 {
				problems = append(problems, fmt.Sprintf("%s: arp_announce is %d (%s); set net.ipv4.conf.all.arp_announce=2, or the backend's ARP requests announce the VIP", name, v, why))
			}
			if v, why := eff("rp_filter"); v == 1 {
				problems = append(problems, fmt.Sprintf("%s: rp_filter is strict (%s); set net.ipv4.conf.all.rp_filter=0 and %s's to 0 (or 2, loose), or frames whose source routes elsewhere are dropped", name, why, name))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		return &SetupError{VIP: vip, Problems: problems}
	}
	return nil
}

// readConf reads /proc/sys/net/ipv4/conf/<dev>/<key> in the calling
// thread's namespace.
func readConf(dev, key string) (int, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv4/conf", dev, key))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
