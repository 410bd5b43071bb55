package spinwire

// Error types shared by the whole SDK. Every error coming from the server keeps the
// Centrifugo code so callers can branch on it with errors.As.

import (
	"errors"
	"fmt"
)

// APIError is a server API error: the `error` field of a server API response
// (codes in §4.4 of the protocol: 100 internal, 102 unknown channel, 107 bad request,
// 108 not available, 112 unrecoverable position, ...).
type APIError struct {
	Code    uint32
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("spinwire: server API error %d: %s", e.Code, e.Message)
}

// ReplyError is an error the server returned for a client protocol command
// (connect, subscribe, publish, presence, history, ...), e.g. 103 permission denied or
// 109 token expired. Temporary errors may succeed when retried.
type ReplyError struct {
	Code      uint32
	Message   string
	Temporary bool
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("spinwire: error %d: %s", e.Code, e.Message)
}

// DisconnectError reports why a real-time session ended: a Centrifugo disconnect code
// (3000-4999) with its reason, or one of the SDK's own codes (Code* constants below 100).
type DisconnectError struct {
	Code   uint32
	Reason string
}

func (e *DisconnectError) Error() string {
	return fmt.Sprintf("spinwire: disconnected %d: %s", e.Code, e.Reason)
}

// Reconnect tells whether a client should connect again after this disconnect.
func (e *DisconnectError) Reconnect() bool { return ShouldReconnect(e.Code) }

// ShouldReconnect applies the Centrifugo rule: 3500-3999 and 4500-4999 are terminal,
// every other code (3000-3499, 4000-4499, >=5000 and the SDK's transport-level codes)
// means "connect again".
func ShouldReconnect(code uint32) bool {
	return !((code >= 3500 && code < 4000) || (code >= 4500 && code < 5000))
}

// SDK-side codes for connection state changes that the server did not announce. They
// stay below 100 so they never collide with protocol error codes or disconnect codes.
const (
	// CodeClientClosed: Close was called (DisconnectedEvent).
	CodeClientClosed uint32 = 0
	// CodeTransportClosed: the gRPC stream failed or ended without a disconnect push.
	CodeTransportClosed uint32 = 1
	// CodeNoPing: the server stopped sending pings; the connection is presumed dead.
	CodeNoPing uint32 = 2
	// CodeEventQueueOverflow: event handlers fell behind and the bounded event queue
	// filled up; the client reconnects (recovering positioned subscriptions) once it drains.
	CodeEventQueueOverflow uint32 = 3
	// CodeConnectTimeout: the server did not answer the connect command in time.
	CodeConnectTimeout uint32 = 4
	// CodeUnauthorized: GetToken returned ErrUnauthorized (DisconnectedEvent).
	CodeUnauthorized uint32 = 5
)

// Unsubscribe codes the SDK reports in UnsubscribedEvent when the server did not send one.
const (
	// UnsubscribeCodeCalled: Unsubscribe was called.
	UnsubscribeCodeCalled uint32 = 0
)

var (
	// ErrClientClosed is returned by calls on a client after Close.
	ErrClientClosed = errors.New("spinwire: client closed")
	// ErrClientDisconnected is returned by calls that need a connection when the client
	// is disconnected and not trying to connect.
	ErrClientDisconnected = errors.New("spinwire: client disconnected")
	// ErrConnectionLost is returned by calls whose connection ended before the reply came.
	ErrConnectionLost = errors.New("spinwire: connection lost before reply")
	// ErrSubscriptionUnsubscribed is returned by Subscribe when the subscription was
	// unsubscribed while waiting.
	ErrSubscriptionUnsubscribed = errors.New("spinwire: subscription unsubscribed")
	// ErrDuplicateSubscription is returned by NewSubscription for a channel that already
	// has a subscription on this client.
	ErrDuplicateSubscription = errors.New("spinwire: duplicate subscription")
	// ErrUnauthorized may be returned (wrapped or not) by a GetToken function to say that
	// the user may not connect or subscribe at all; the client or subscription then stops
	// instead of retrying.
	ErrUnauthorized = errors.New("spinwire: unauthorized")
)
