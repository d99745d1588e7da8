package l2lb

import (
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lbkit/lbkit/internal/netlab"
)

// ethFlagTxVLAN is ETH_FLAG_TXVLAN (tx-vlan-hw-insert) of the legacy
// ethtool flags.
const ethFlagTxVLAN = 1 << 7

// clearEthtoolFlag clears one of the legacy ethtool flags (ETHTOOL_GFLAGS,
// ETHTOOL_SFLAGS) of dev in h's namespace.
func clearEthtoolFlag(h *netlab.Host, dev string, flag uint32) error {
	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		val := struct{ cmd, data uint32 }{cmd: unix.ETHTOOL_GFLAGS}
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [16]byte
		}
		copy(ifr.name[:unix.IFNAMSIZ-1], dev)
		ifr.data = unsafe.Pointer(&val)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
			return e
		}
		val.cmd, val.data = unix.ETHTOOL_SFLAGS, val.data&^flag
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
			return e
		}
		return nil
	})
}

// sendSYN sends a TCP SYN for the IPv4 VIP from the client straight onto
// its link, 802.1Q-tagged with vlan unless it is 0, and returns how many
// frames the balancer forwarded meanwhile. The lab's bridge moves an
// in-band tag into the frame's metadata on receipt (VLAN offload) and
// hands it to the balancer's veth there, as a bridge with VLAN filtering
// does on a tagged port.
func (l *dsrLab) sendSYN(t *testing.T, sport uint16, vlan uint16) uint64 {
	t.Helper()
	before, err := l.bal.Stats()
	require.NoError(t, err)
	f := frame(Flow{Src: netip.AddrPortFrom(l.client.Addr4(), sport), Dst: netip.AddrPortFrom(labVIP4, 80), Proto: TCP}, 0x02, nil)
	copy(f[0:6], l.lb.Link().MAC)
	copy(f[6:12], l.client.Link().MAC)
	if vlan != 0 {
		f = append(append(append([]byte{}, f[:12]...), 0x81, 0x00, byte(vlan>>8), byte(vlan)), f[12:]...)
	}
	require.NoError(t, l.client.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: l.client.Link().Index, Halen: 6})
	}))
	// The frame is seen once the program counted it, passed or not.
	var after Stats
	require.Eventually(t, func() bool {
		after, err = l.bal.Stats()
		return err == nil && after.Passed+after.Forwarded+after.Dropped > before.Passed+before.Forwarded+before.Dropped
	}, 5*time.Second, time.Millisecond)
	return after.Forwarded - before.Forwarded
}

// TestLabVLANTagged sends 802.1Q-tagged SYNs for a VIP through a Linux
// bridge into the balancer: a tagged frame belongs to another VLAN and
// must pass, not be balanced, also when the kernel carries the tag beside
// the frame. In driver mode the bound program asks the driver for the
// tag (veth reports it); in generic mode the program sees the tag only
// in the frame, as the package documents.
func TestLabVLANTagged(t *testing.T) {
	t.Run("driver", func(t *testing.T) {
		l := newDSRLabMode(t, 1, AttachDriver)
		require.Equal(t, AttachDriver, l.bal.Mode())
		assert.EqualValues(t, 1, l.sendSYN(t, 40001, 0), "an untagged SYN is balanced")
		assert.EqualValues(t, 0, l.sendSYN(t, 40002, 5), "a SYN tagged for VLAN 5, tag in metadata, passes")
		require.NoError(t, clearEthtoolFlag(l.lab.Bridge(), l.lb.Link().PeerName, ethFlagTxVLAN))
		assert.EqualValues(t, 0, l.sendSYN(t, 40003, 5), "a SYN tagged in the frame passes")
	})
	t.Run("generic", func(t *testing.T) {
		l := newDSRLabMode(t, 1, AttachGeneric)
		assert.EqualValues(t, 1, l.sendSYN(t, 40001, 0), "an untagged SYN is balanced")
		assert.EqualValues(t, 1, l.sendSYN(t, 40002, 5), "generic mode cannot see a tag in metadata (documented)")
		require.NoError(t, clearEthtoolFlag(l.lab.Bridge(), l.lb.Link().PeerName, ethFlagTxVLAN))
		assert.EqualValues(t, 0, l.sendSYN(t, 40003, 5), "a SYN tagged in the frame passes")
	})
}
