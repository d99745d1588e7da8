package evloop

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

const (
	chunkBits = 10
	chunkSize = 1 << chunkBits
	maxChunks = 1 << 12 // descriptors below 4M
	batch     = 256     // events taken per epoll_wait
)

type chunk[T any] [chunkSize]atomic.Pointer[T]

// Poller waits for parked connections to turn readable. Its methods are
// safe for concurrent use.
type Poller[T any] struct {
	epfd  int
	file  *os.File // epfd, watched by the runtime's poller
	ready func(*T)
	mu    sync.Mutex // guards chunk allocation
	dir   [maxChunks]atomic.Pointer[chunk[T]]
	done  chan struct{}
	once  sync.Once
}

// New starts a poller that calls ready, on its own goroutine, with the
// record a descriptor was armed with once that descriptor is readable.
// ready must not block: it should start a goroutine.
func New[T any](ready func(*T)) (*Poller[T], error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("evloop: epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("evloop: %w", err)
	}
	p := &Poller[T]{epfd: epfd, file: os.NewFile(uintptr(epfd), "evloop"), ready: ready, done: make(chan struct{})}
	rc, err := p.file.SyscallConn()
	if err != nil {
		p.file.Close()
		return nil, fmt.Errorf("evloop: %w", err)
	}
	go p.loop(rc)
	return p, nil
}

func (p *Poller[T]) loop(rc interface {
	Read(func(uintptr) bool) error
}) {
	defer close(p.done)
	events := make([]unix.EpollEvent, batch)
	wait := func(fd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(fd), events, 0)
			if err == unix.EINTR {
				continue
			}
			for i := 0; i < n; i++ {
				if v := p.slot(int(events[i].Fd), false); v != nil {
					if t := v.Load(); t != nil {
						p.ready(t)
					}
				}
			}
			if n < len(events) {
				// Drained: wait for the runtime's poller to see the
				// epoll descriptor readable again.
				return false
			}
		}
	}
	for {
		if err := rc.Read(wait); err != nil {
			return
		}
	}
}

// slot returns fd's entry in the table, allocating its chunk when grow.
func (p *Poller[T]) slot(fd int, grow bool) *atomic.Pointer[T] {
	i := fd >> chunkBits
	if fd < 0 || i >= maxChunks {
		return nil
	}
	c := p.dir[i].Load()
	if c == nil {
		if !grow {
			return nil
		}
		p.mu.Lock()
		if c = p.dir[i].Load(); c == nil {
			c = new(chunk[T])
			p.dir[i].Store(c)
		}
		p.mu.Unlock()
	}
	return &c[fd&(chunkSize-1)]
}

// ErrRange is returned by Add for a descriptor too large for the table.
var ErrRange = errors.New("evloop: descriptor out of range")

// Add records v as fd's owner and watches fd, edge-triggered, from now
// until fd is closed: the poller calls ready(v) whenever bytes arrive or
// the peer hangs up (and at once if bytes are waiting), whatever v's
// state, so ready must ignore a connection that is not parked. The
// caller must own fd (keep it open) while adding; if Add fails, nothing
// will call ready.
func (p *Poller[T]) Add(fd int, v *T) error {
	s := p.slot(fd, true)
	if s == nil {
		return ErrRange
	}
	s.Store(v)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	if err == unix.EEXIST {
		// The descriptor's number was watched for a connection that
		// closed while being added: replace its registration.
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
	}
	if err != nil {
		s.CompareAndSwap(v, nil)
		return fmt.Errorf("evloop: epoll_ctl: %w", err)
	}
	return nil
}

// Forget drops v from fd's entry, unless another record took it since.
// Call it when the connection ends; closing fd removes it from the epoll
// set.
func (p *Poller[T]) Forget(fd int, v *T) {
	if s := p.slot(fd, false); s != nil {
		s.CompareAndSwap(v, nil)
	}
}

// Remove stops watching fd for v: Forget, and the descriptor leaves the
// epoll set (for a connection handed over while still open).
func (p *Poller[T]) Remove(fd int, v *T) {
	if s := p.slot(fd, false); s != nil && s.CompareAndSwap(v, nil) {
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
}

// Close stops the poller and waits for its goroutine. Connections still
// armed are never reported. It is idempotent.
func (p *Poller[T]) Close() error {
	p.once.Do(func() { p.file.Close() })
	<-p.done
	return nil
}
