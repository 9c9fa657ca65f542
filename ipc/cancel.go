package ipc

import (
	"context"

	"github.com/pairvisor/pairvisor/ipc/wire"
)

// Cancel frames we send (protocol version 2). A caller that gives up on
// a request must return at once, so it only queues the request's id;
// writeCancels, a goroutine started for the purpose, writes the queue
// and ends when it is empty. It is counted in Conn.writers, so teardown
// waits for it; its writes are bounded by WriteTimeout each, and end at
// once when the Conn closes.

// maxCancelQueue bounds the cancel frames waiting to be written. One
// that does not fit is dropped: the peer's handler then runs to its end
// and its reply is dropped like any other late reply, which costs the
// peer work but breaks nothing.
const maxCancelQueue = 1024

// cancelLocked queues a cancel frame for our request id, of type t, if
// the connection speaks version 2 and a handler may be working on it
// (not for pings, which the peer answers itself). Called with pmu held.
func (c *Conn) cancelLocked(t wire.Type, id uint64) {
	if c.ver < 2 || t == wire.TypePing || c.closed || len(c.cancelQ) >= maxCancelQueue {
		return
	}
	c.cancelQ = append(c.cancelQ, id)
	if !c.cancelOn {
		// Under pmu and before closed is set: teardown, which sets
		// closed under pmu, waits for writers after this Add.
		c.cancelOn = true
		c.writers.Add(1)
		go c.writeCancels()
	}
}

// writeCancels writes the queued cancel frames, each behind the frames
// already waiting for the write lock (so after the request it cancels),
// until the queue is empty or the Conn closes.
func (c *Conn) writeCancels() {
	defer c.writers.Done()
	var ids []uint64
	for {
		c.pmu.Lock()
		ids, c.cancelQ = c.cancelQ, ids[:0]
		if len(ids) == 0 || c.closed {
			c.cancelQ = nil
			c.cancelOn = false
			c.pmu.Unlock()
			return
		}
		c.pmu.Unlock()
		for _, id := range ids {
			if err := c.writeFrame(context.Background(), c.cfg.WriteTimeout, wire.Header{Type: wire.TypeCancel, ID: id}, nil); err != nil {
				c.log.Debug("cancel not sent", "id", id, "error", err)
			}
		}
	}
}
