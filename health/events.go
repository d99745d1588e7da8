package health

import "sync/atomic"

type subscriber struct {
	fn     func(Event)
	active atomic.Bool
}

// Subscribe registers fn to receive every [Event] from now on and returns
// a function that unregisters it. Events fire on transitions only: a
// change of published state, of the weight an agent asked for (then State
// may equal Prev and Weight is set), a target added (Reason "added", Prev
// Unknown) or removed (Reason "removed", State Unknown). A new subscriber
// is not told the current states; read them with [Checker.State].
//
// All callbacks run one at a time on the checker's single event
// goroutine, in the order the transitions happened (so in order per
// target), and never while the checker holds a lock: a callback may call
// any method of the checker except Close. A slow callback delays the
// events of every subscriber, not the probes. After unsubscribe returns,
// fn is not called again, except that a call already running on the event
// goroutine finishes. Unsubscribe is idempotent.
func (c *Checker) Subscribe(fn func(Event)) (unsubscribe func()) {
	s := &subscriber{fn: fn}
	s.active.Store(true)
	c.subMu.Lock()
	old := *c.subs.Load()
	next := append(old[:len(old):len(old)], s)
	c.subs.Store(&next)
	c.subMu.Unlock()
	return func() {
		if !s.active.Swap(false) {
			return
		}
		c.subMu.Lock()
		defer c.subMu.Unlock()
		old := *c.subs.Load()
		next := make([]*subscriber, 0, len(old))
		for _, o := range old {
			if o != s {
				next = append(next, o)
			}
		}
		c.subs.Store(&next)
	}
}

// emit queues ev for delivery. It never blocks on subscribers.
func (c *Checker) emit(ev Event) {
	c.qmu.Lock()
	c.queue = append(c.queue, ev)
	c.qmu.Unlock()
	select {
	case c.qwake <- struct{}{}:
	default:
	}
}

// dispatch is the event goroutine.
func (c *Checker) dispatch() {
	defer c.wg.Done()
	var batch []Event
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.qwake:
		}
		for {
			c.qmu.Lock()
			batch, c.queue = c.queue, batch[:0]
			c.qmu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i := range batch {
				if c.ctx.Err() != nil {
					return
				}
				c.logEvent(&batch[i])
				for _, s := range *c.subs.Load() {
					if s.active.Load() {
						s.fn(batch[i])
					}
				}
				batch[i] = Event{}
			}
		}
	}
}

// logEvent logs a transition, on the event goroutine so that no lock is
// held while the handler writes.
func (c *Checker) logEvent(ev *Event) {
	switch {
	case ev.State != ev.Prev:
		c.log.Info("health: state changed", "target", ev.Target, "state", ev.State, "prev", ev.Prev, "reason", ev.Reason, "err", ev.Err)
	case ev.Weight != 0:
		c.log.Info("health: weight changed", "target", ev.Target, "weight", ev.Weight, "reason", ev.Reason)
	}
}
