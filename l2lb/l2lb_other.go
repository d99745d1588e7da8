//go:build !linux

package l2lb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// Balancer is a layer-2 balancer. It exists only on Linux; here every
// method fails with errors.ErrUnsupported.
type Balancer struct{}

// New returns errors.ErrUnsupported: XDP exists only on Linux.
func New(cfg Config) (*Balancer, error) {
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("l2lb: %w on this platform", errors.ErrUnsupported)
}

// Serve returns errors.ErrUnsupported.
func (b *Balancer) Serve(ctx context.Context) error { return errors.ErrUnsupported }

// Shutdown returns nil.
func (b *Balancer) Shutdown(ctx context.Context) error { return nil }

// Close returns nil.
func (b *Balancer) Close() error { return nil }

// AddService returns errors.ErrUnsupported.
func (b *Balancer) AddService(svc Service) error { return errors.ErrUnsupported }

// UpdateService returns errors.ErrUnsupported.
func (b *Balancer) UpdateService(svc Service) error { return errors.ErrUnsupported }

// RemoveService returns errors.ErrUnsupported.
func (b *Balancer) RemoveService(vip netip.AddrPort, proto Protocol) error {
	return errors.ErrUnsupported
}

// SetServices returns errors.ErrUnsupported.
func (b *Balancer) SetServices(svcs []Service) error { return errors.ErrUnsupported }

// Services returns nil.
func (b *Balancer) Services() []Service { return nil }

// Sync returns errors.ErrUnsupported.
func (b *Balancer) Sync(ctx context.Context) error { return errors.ErrUnsupported }

// Mode returns AttachAuto.
func (b *Balancer) Mode() AttachMode { return AttachAuto }

// Stats returns errors.ErrUnsupported.
func (b *Balancer) Stats() (Stats, error) { return Stats{}, errors.ErrUnsupported }

// ConnTable returns errors.ErrUnsupported.
func (b *Balancer) ConnTable() (ConnTableStats, error) {
	return ConnTableStats{}, errors.ErrUnsupported
}

// CheckBackend returns errors.ErrUnsupported: the checks read Linux
// sysctls.
func CheckBackend(do func(func() error) error, vip netip.Addr) error {
	return fmt.Errorf("l2lb: %w on this platform", errors.ErrUnsupported)
}
