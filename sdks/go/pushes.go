package spinwire

// Pushes from the server: publications, join/leave, (un)subscribe and messages are
// routed to the subscription or server-side subscription of their channel. All of it
// runs on the session reader goroutine, in stream order.

import (
	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifuge/protocol"
)

// serverSub tracks the stream position of a server-side subscription for recovery.
type serverSub struct {
	recoverable bool
	pos         StreamPosition
	hasPos      bool
}

// handlePush dispatches an asynchronous push. Reader goroutine.
func (c *Client) handlePush(s *session, p *protocol.Push) {
	if d := p.GetDisconnect(); d != nil {
		s.close(&DisconnectError{Code: d.GetCode(), Reason: d.GetReason()})
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session != s || s.ending() {
		return
	}
	channel := p.GetChannel()
	sub, ss := c.subs[channel], c.serverSubs[channel]
	switch {
	case p.GetPub() != nil:
		if sub != nil {
			if sub.state == SubStateSubscribed && !sub.deliver(p.GetPub()) {
				c.overflow(s)
			}
		} else if ss != nil && !c.deliverServer(channel, ss, p.GetPub()) {
			c.overflow(s)
		}
	case p.GetJoin() != nil:
		info := infoFromProto(p.GetJoin().GetInfo())
		if sub != nil {
			emit(c.events, sub.h.join, JoinEvent{ClientInfo: info}, false)
		} else if ss != nil {
			emit(c.events, c.h.serverJoin, ServerJoinEvent{Channel: channel, ClientInfo: info}, false)
		}
	case p.GetLeave() != nil:
		info := infoFromProto(p.GetLeave().GetInfo())
		if sub != nil {
			emit(c.events, sub.h.leave, LeaveEvent{ClientInfo: info}, false)
		} else if ss != nil {
			emit(c.events, c.h.serverLeave, ServerLeaveEvent{Channel: channel, ClientInfo: info}, false)
		}
	case p.GetUnsubscribe() != nil:
		u := p.GetUnsubscribe()
		if sub != nil {
			sub.serverUnsubscribed(s, u.GetCode(), u.GetReason())
		} else if ss != nil {
			delete(c.serverSubs, channel)
			emit(c.events, c.h.serverUnsubscribed, ServerUnsubscribedEvent{Channel: channel}, true)
		}
	case p.GetSubscribe() != nil:
		ps := p.GetSubscribe()
		c.serverSubscribed(s, channel, &protocol.SubscribeResult{
			Recoverable: ps.GetRecoverable(), Positioned: ps.GetPositioned(),
			Epoch: ps.GetEpoch(), Offset: ps.GetOffset(), Data: ps.GetData(),
		})
	case p.GetMessage() != nil:
		emit(c.events, c.h.message, MessageEvent{Data: p.GetMessage().GetData()}, false)
	}
}

// applyServerSubs reconciles server-side subscriptions with a connect result: new or
// recovered ones are announced (then their recovered publications), vanished ones
// removed. Called with mu held.
func (c *Client) applyServerSubs(s *session, subs map[string]*protocol.SubscribeResult) {
	for ch := range c.serverSubs {
		if _, ok := subs[ch]; !ok {
			delete(c.serverSubs, ch)
			emit(c.events, c.h.serverUnsubscribed, ServerUnsubscribedEvent{Channel: ch}, true)
		}
	}
	for ch, res := range subs {
		c.serverSubscribed(s, ch, res)
	}
}

// serverSubscribed records a server-side subscription and delivers its recovered
// publications. Called with mu held.
func (c *Client) serverSubscribed(s *session, channel string, res *protocol.SubscribeResult) {
	ss := c.serverSubs[channel]
	if ss == nil {
		ss = &serverSub{}
		c.serverSubs[channel] = ss
	}
	ss.recoverable = res.GetRecoverable()
	ev := ServerSubscribedEvent{
		Channel:       channel,
		WasRecovering: res.GetWasRecovering(),
		Recovered:     res.GetRecovered(),
		Recoverable:   res.GetRecoverable(),
		Positioned:    res.GetPositioned(),
		Data:          res.GetData(),
	}
	if res.GetRecoverable() || res.GetPositioned() {
		ss.pos, ss.hasPos = StreamPosition{Offset: res.GetOffset(), Epoch: res.GetEpoch()}, true
		pos := ss.pos
		ev.StreamPosition = &pos
	}
	emit(c.events, c.h.serverSubscribed, ev, true)
	for _, pub := range res.GetPublications() {
		if !c.deliverServer(channel, ss, pub) {
			c.overflow(s)
			return
		}
	}
}

// deliverServer queues a server-side publication and advances the position only if it
// was queued. Called with mu held.
func (c *Client) deliverServer(channel string, ss *serverSub, pub *protocol.Publication) bool {
	if !emit(c.events, c.h.serverPublication, ServerPublicationEvent{Channel: channel, Publication: pubFromProto(pub)}, false) {
		return false
	}
	if pub.GetOffset() > 0 {
		ss.pos.Offset = pub.GetOffset()
	}
	return true
}
