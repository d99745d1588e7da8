//go:build !linux

package iplb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
)

// Balancer programs virtual services into the kernel. Outside Linux it
// cannot be created: [New] returns [errors.ErrUnsupported].
type Balancer struct{}

// New returns an error wrapping [errors.ErrUnsupported]: iplb needs Linux
// nftables.
func New(cfg Config) (*Balancer, error) {
	return nil, fmt.Errorf("iplb: nftables needs Linux: %w", errors.ErrUnsupported)
}

// Serve returns [errors.ErrUnsupported].
func (b *Balancer) Serve(ctx context.Context) error { return errors.ErrUnsupported }

// Shutdown does nothing.
func (b *Balancer) Shutdown(ctx context.Context) error { return nil }

// Close does nothing.
func (b *Balancer) Close() error { return nil }

// AddService returns [errors.ErrUnsupported].
func (b *Balancer) AddService(svc Service) error { return errors.ErrUnsupported }

// UpdateService returns [errors.ErrUnsupported].
func (b *Balancer) UpdateService(svc Service) error { return errors.ErrUnsupported }

// RemoveService returns [errors.ErrUnsupported].
func (b *Balancer) RemoveService(name string) error { return errors.ErrUnsupported }

// SetServices returns [errors.ErrUnsupported].
func (b *Balancer) SetServices(svcs []Service) error { return errors.ErrUnsupported }

// Services returns nil.
func (b *Balancer) Services() []Service { return nil }

// Pool returns nil.
func (b *Balancer) Pool(name string) *balancer.Pool { return nil }

// Sync returns [errors.ErrUnsupported].
func (b *Balancer) Sync(ctx context.Context) error { return errors.ErrUnsupported }

// Lookup reports false.
func (b *Balancer) Lookup(service string, client netip.AddrPort) (netip.AddrPort, bool) {
	return netip.AddrPort{}, false
}

// Stats returns [errors.ErrUnsupported].
func (b *Balancer) Stats() ([]ServiceStats, error) { return nil, errors.ErrUnsupported }
