package evloop

import (
	"sync"
	"time"
)

// Parking is a raw server's parking poller with the sweeper that closes
// connections parked for too long: started by the first Serve whose
// connections may park, stopped once no Serve runs and no connection is
// left, so a later Serve starts them again. Its methods are safe for
// concurrent use; the zero value is ready.
type Parking[T any] struct {
	mu      sync.Mutex
	serving int // Serve calls running
	poll    *Poller[T]
	failed  bool // the poller cannot start here
	stop    chan struct{}
	done    chan struct{}
}

// Enter counts a Serve. With park it returns the poller, starting it and
// a sweeper that calls sweep every period unless they run; it returns
// nil without park or when the poller cannot start (connections then
// keep their goroutine).
func (p *Parking[T]) Enter(park bool, ready func(*T), period time.Duration, sweep func(now time.Time)) *Poller[T] {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serving++
	if !park {
		return nil
	}
	if p.poll == nil && !p.failed {
		poll, err := New(ready)
		if err != nil {
			p.failed = true
			return nil
		}
		p.poll = poll
		p.stop, p.done = make(chan struct{}), make(chan struct{})
		go p.sweep(period, sweep, p.stop, p.done)
	}
	return p.poll
}

func (p *Parking[T]) sweep(period time.Duration, sweep func(time.Time), stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			sweep(now)
		}
	}
}

// Leave counts a Serve's end, and stops the poller and the sweeper when
// no other Serve runs and conns (the server's open connections) is 0.
func (p *Parking[T]) Leave(conns func() int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serving--
	p.stopLocked(false, conns)
}

// Release stops the poller and the sweeper when no Serve runs and conns
// is 0: call it when a connection left a server.
func (p *Parking[T]) Release(conns func() int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked(false, conns)
}

// Stop stops the poller and the sweeper, once the server closed.
func (p *Parking[T]) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked(true, nil)
}

func (p *Parking[T]) stopLocked(always bool, conns func() int) {
	if p.poll == nil || !always && (p.serving > 0 || conns() > 0) {
		return
	}
	close(p.stop)
	<-p.done
	p.poll.Close()
	p.poll = nil
}
