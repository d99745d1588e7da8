package h1

import (
	"net/netip"

	"github.com/lbkit/lbkit/balancer"
)

// KeyRequest is a parsed head with its client address: a
// [balancer.KeyRequest] a raw server hands to Key.Request without
// allocating. A server keeps one per connection and passes its address.
type KeyRequest struct {
	Head   *Head
	Client netip.Addr
}

var _ balancer.KeyRequest = (*KeyRequest)(nil)

// ClientAddr returns the request's client address.
func (k *KeyRequest) ClientAddr() netip.Addr { return k.Client }

// Header returns the first value of the named field.
func (k *KeyRequest) Header(name string) ([]byte, bool) {
	v, ok := k.Head.Header(name)
	return bytesOf(v), ok
}

// Cookie returns the value of the named cookie.
func (k *KeyRequest) Cookie(name string) ([]byte, bool) {
	v, ok := k.Head.Cookie(name)
	return bytesOf(v), ok
}

// Path returns the target's path.
func (k *KeyRequest) Path() []byte { return bytesOf(k.Head.Path()) }

// Query returns the raw value of the named query parameter.
func (k *KeyRequest) Query(name string) ([]byte, bool) {
	v, ok := k.Head.Query(name)
	return bytesOf(v), ok
}
