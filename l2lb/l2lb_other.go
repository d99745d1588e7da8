//go:build !linux

package l2lb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// Balancer is a running layer-2 balancer. It exists only on Linux; here
// every method fails with errors.ErrUnsupported.
type Balancer struct{}

// New returns errors.ErrUnsupported: XDP exists only on Linux.
func New(cfg Config) (*Balancer, error) {
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("l2lb: %w on this platform", errors.ErrUnsupported)
}

// Sync returns errors.ErrUnsupported.
func (b *Balancer) Sync(ctx context.Context) error { return errors.ErrUnsupported }

// Mode returns AttachAuto.
func (b *Balancer) Mode() AttachMode { return AttachAuto }

// Stats returns errors.ErrUnsupported.
func (b *Balancer) Stats() (Stats, error) { return Stats{}, errors.ErrUnsupported }

// Close returns nil.
func (b *Balancer) Close() error { return nil }

// CheckBackend returns errors.ErrUnsupported: the checks read Linux
// sysctls.
func CheckBackend(do func(func() error) error, vip netip.Addr) error {
	return fmt.Errorf("l2lb: %w on this platform", errors.ErrUnsupported)
}
