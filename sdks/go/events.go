package spinwire

// Event types handed to Client and Subscription handlers, and the bounded queue that
// delivers them in order from one goroutine per client.

import (
	"context"
	"sync"
)

// StreamPosition is a position in a channel's publication stream.
type StreamPosition struct {
	Offset uint64
	Epoch  string
}

// ClientInfo describes the connection behind a publication, join, leave or presence
// entry.
type ClientInfo struct {
	User     string
	Client   string
	ConnInfo []byte
	ChanInfo []byte
}

// Publication is one message published into a channel.
type Publication struct {
	// Offset is the position in the channel's stream (0 when the channel keeps no history).
	Offset uint64
	Data   []byte
	// Info is set for publications made by clients (nil for server API publishes).
	Info *ClientInfo
	Tags map[string]string
}

// ConnectingEvent: the client is (re)connecting. Code/Reason say why: the server's
// disconnect code, a Code* constant, or CodeClientClosed with reason "connect called"
// for the first attempt.
type ConnectingEvent struct {
	Code   uint32
	Reason string
}

// ConnectedEvent: the connect handshake succeeded.
type ConnectedEvent struct {
	ClientID string
	// Version is the server version string.
	Version string
	// Data is the connect result data (from a connect proxy).
	Data []byte
}

// DisconnectedEvent: the client stopped and will not reconnect by itself: a terminal
// disconnect code (3500-3999, 4500-4999), a non-retryable connect error code (e.g. 109
// token expired with no GetToken), CodeUnauthorized, or CodeClientClosed after Close.
type DisconnectedEvent struct {
	Code   uint32
	Reason string
}

// ErrorEvent reports a problem the client handles by itself (a failed connect attempt,
// a token refresh failure, an overflowing event queue). Informational.
type ErrorEvent struct {
	Err error
}

// MessageEvent is an asynchronous message sent to this connection by the server.
type MessageEvent struct {
	Data []byte
}

// ServerSubscribedEvent: the server subscribed this connection to Channel (from the
// token's channels/subs claims, or the server API subscribe method).
type ServerSubscribedEvent struct {
	Channel       string
	WasRecovering bool
	Recovered     bool
	Recoverable   bool
	Positioned    bool
	// StreamPosition is set for positioned/recoverable subscriptions.
	StreamPosition *StreamPosition
	Data           []byte
}

// ServerUnsubscribedEvent: the server removed the server-side subscription to Channel.
type ServerUnsubscribedEvent struct {
	Channel string
}

// ServerPublicationEvent is a publication in a server-side subscription.
type ServerPublicationEvent struct {
	Channel string
	Publication
}

// ServerJoinEvent / ServerLeaveEvent are presence changes in a server-side subscription.
type ServerJoinEvent struct {
	Channel string
	ClientInfo
}

type ServerLeaveEvent struct {
	Channel string
	ClientInfo
}

// SubscribingEvent: the subscription is being (re)established. Code/Reason say why:
// an unsubscribe code >= 2500 from the server, or the client's connecting code.
type SubscribingEvent struct {
	Code   uint32
	Reason string
}

// SubscribedEvent: the server confirmed the subscription.
type SubscribedEvent struct {
	// WasRecovering: the subscribe asked to recover missed publications.
	WasRecovering bool
	// Recovered: every missed publication was recovered; they follow as
	// PublicationEvents, in order, right after this event. WasRecovering && !Recovered
	// means publications may have been lost: re-sync application state.
	Recovered      bool
	Recoverable    bool
	Positioned     bool
	StreamPosition *StreamPosition
	Data           []byte
}

// UnsubscribedEvent: the subscription ended and will not come back by itself. Code is
// an unsubscribe code from the server (2000 server unsubscribe), a subscribe error code
// (e.g. 103 permission denied), or UnsubscribeCodeCalled.
type UnsubscribedEvent struct {
	Code   uint32
	Reason string
}

// SubscriptionErrorEvent reports a subscribe failure the subscription retries, or the
// error that ended it.
type SubscriptionErrorEvent struct {
	Err error
}

// PublicationEvent is a publication in a client-side subscription.
type PublicationEvent struct {
	Publication
}

// JoinEvent / LeaveEvent are presence changes in a subscribed channel (needs
// SubscriptionConfig.JoinLeave or the namespace's force_push_join_leave).
type JoinEvent struct {
	ClientInfo
}

type LeaveEvent struct {
	ClientInfo
}

// eventQueue runs callbacks in FIFO order on one goroutine. Data events (publications,
// join/leave, messages, errors) are refused once the queue holds limit items, which the
// client turns into a reconnect; state events are always accepted so that handlers
// never miss a state change. State events are bounded too: the client does not attempt
// a new connection, the only source of new ones, until the queue has drained (waitRoom).
type eventQueue struct {
	mu     sync.Mutex
	items  []func()
	limit  int
	closed bool
	wake   chan struct{} // capacity 1: "items were added"
	room   chan struct{} // closed when the queue drains to limit/2; nil if nobody waits
}

func newEventQueue(limit int) *eventQueue {
	q := &eventQueue{limit: limit, wake: make(chan struct{}, 1)}
	go q.run()
	return q
}

// push appends a data event; false when the queue is full or closed.
func (q *eventQueue) push(f func()) bool { return q.add(f, false) }

// pushState appends a state event regardless of the limit; false only when closed.
func (q *eventQueue) pushState(f func()) bool { return q.add(f, true) }

func (q *eventQueue) add(f func(), force bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || (!force && len(q.items) >= q.limit) {
		return false
	}
	q.items = append(q.items, f)
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// waitRoom blocks until the queue is at most half full.
func (q *eventQueue) waitRoom(ctx context.Context) error {
	q.mu.Lock()
	if q.closed || len(q.items) <= q.limit/2 {
		q.mu.Unlock()
		return nil
	}
	if q.room == nil {
		q.room = make(chan struct{})
	}
	room := q.room
	q.mu.Unlock()
	select {
	case <-room:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close lets the dispatcher finish what is queued, then stop.
func (q *eventQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.closed = true
	if q.room != nil {
		close(q.room)
		q.room = nil
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) run() {
	for {
		q.mu.Lock()
		for len(q.items) == 0 {
			if q.closed {
				q.mu.Unlock()
				return
			}
			q.mu.Unlock()
			<-q.wake
			q.mu.Lock()
		}
		f := q.items[0]
		q.items[0] = nil
		q.items = q.items[1:]
		if q.room != nil && len(q.items) <= q.limit/2 {
			close(q.room)
			q.room = nil
		}
		q.mu.Unlock()
		f()
	}
}
