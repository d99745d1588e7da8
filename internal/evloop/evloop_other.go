//go:build !linux

package evloop

import "errors"

// Poller is not available on this system.
type Poller[T any] struct{}

// ErrRange is returned by Add for a descriptor too large for the table.
var ErrRange = errors.New("evloop: descriptor out of range")

// New fails: parking needs Linux's epoll.
func New[T any](ready func(*T)) (*Poller[T], error) {
	return nil, errors.New("evloop: not supported on this system")
}

// Add fails: see New.
func (p *Poller[T]) Add(fd int, v *T) error { return ErrRange }

// Forget does nothing.
func (p *Poller[T]) Forget(fd int, v *T) {}

// Remove does nothing.
func (p *Poller[T]) Remove(fd int, v *T) {}

// Close does nothing.
func (p *Poller[T]) Close() error { return nil }
