package looppeers

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
)

// Flags are the command-line flags the peers share with benchlbkit.
type Flags struct {
	// Listen is the address to listen on.
	Listen string
	// Backends are the backends' addresses.
	Backends []netip.AddrPort
}

// ParseFlags parses the command line into Flags: -listen and -backends
// (comma-separated), as benchlbkit's.
func ParseFlags(fs *flag.FlagSet, args []string) (Flags, error) {
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	backends := fs.String("backends", "", "comma-separated backend addresses")
	if err := fs.Parse(args); err != nil {
		return Flags{}, err
	}
	f := Flags{Listen: *listen}
	if *backends == "" {
		return Flags{}, errors.New("looppeers: -backends is required")
	}
	for a := range strings.SplitSeq(*backends, ",") {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return Flags{}, fmt.Errorf("looppeers: -backends: %w", err)
		}
		f.Backends = append(f.Backends, ap)
	}
	return f, nil
}

// StdinClosed returns a channel closed when the standard input ends: the
// benchmark closes it to stop a peer.
func StdinClosed() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	return done
}

// Buffers is a pool of output buffers, for loops that write an answer
// out (or copy it into their own outbound buffer) before they return.
type Buffers struct{ p sync.Pool }

// Get returns an empty buffer.
func (b *Buffers) Get() *[]byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return v
	}
	s := make([]byte, 0, 4<<10)
	return &s
}

// Put returns buf to the pool, emptied.
func (b *Buffers) Put(buf *[]byte) {
	*buf = (*buf)[:0]
	b.p.Put(buf)
}
