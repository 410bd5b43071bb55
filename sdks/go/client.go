package spinwire

// Client: the real-time client over spinwire.stream.v1.ClientStreamService/Connect.
// This file holds its configuration, state, handler registration, Connect and Close;
// lifecycle.go the connection loop, pushes.go the handling of server pushes, calls.go
// the request/reply calls, session.go one stream, subscription.go Subscription.
//
// Concurrency: one mutex (mu) guards the client and all its subscriptions. Handlers
// never run under it: they are queued (eventQueue) and called in order on the
// dispatcher goroutine, so a handler may call any client method.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"

	streamv1 "github.com/spinwire/spinwire/sdks/go/gen/spinwire/stream/v1"
)

// State of a Client.
type State int

const (
	// StateDisconnected: not connected and not trying to (before Connect, or after a
	// terminal disconnect).
	StateDisconnected State = iota
	// StateConnecting: trying to connect or reconnect.
	StateConnecting
	// StateConnected: the connect handshake succeeded.
	StateConnected
	// StateClosed: Close was called; the client cannot be used again.
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateDisconnected:
		return "disconnected"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Config configures a Client. Zero values mean the defaults given per field.
type Config struct {
	// Token is the connection JWT. When empty (or after the server said it expired),
	// GetToken is called; with neither, the client connects anonymously.
	Token string
	// GetToken returns a fresh connection token; it is used on connect when Token is
	// empty or expired and to refresh the token before the connection expires. Return
	// an error wrapping ErrUnauthorized to stop the client.
	GetToken func(ctx context.Context) (string, error)
	// Data is sent with the connect command (visible to a connect proxy).
	Data []byte
	// Name and Version identify the SDK to the server (default "go" and Version).
	Name    string
	Version string
	// Headers are emulated headers forwarded to proxies.
	Headers map[string]string
	// MinReconnectDelay and MaxReconnectDelay bound the reconnect backoff
	// (default 200ms and 20s); the same bounds apply to resubscribe retries.
	MinReconnectDelay time.Duration
	MaxReconnectDelay time.Duration
	// Timeout bounds the connect handshake, each command without a context deadline
	// and each GetToken call (default 10s).
	Timeout time.Duration
	// MaxServerPingDelay is how late a server ping may be before the connection is
	// considered dead (default 10s).
	MaxServerPingDelay time.Duration
	// EventQueueSize bounds the queue of events waiting for handlers (default 1024).
	// When handlers fall behind and it fills up, the client reconnects and recovers
	// positioned subscriptions, instead of buffering without limit.
	EventQueueSize int
	// DialOptions are extra gRPC dial options, e.g. grpc.WithTransportCredentials for
	// TLS (the default is plaintext).
	DialOptions []grpc.DialOption
}

func (cfg *Config) applyDefaults() {
	if cfg.Name == "" {
		cfg.Name = "go"
	}
	if cfg.Version == "" {
		cfg.Version = Version
	}
	if cfg.MinReconnectDelay <= 0 {
		cfg.MinReconnectDelay = defaultMinReconnectDelay
	}
	if cfg.MaxReconnectDelay <= 0 {
		cfg.MaxReconnectDelay = defaultMaxReconnectDelay
	}
	if cfg.MaxReconnectDelay < cfg.MinReconnectDelay {
		cfg.MaxReconnectDelay = cfg.MinReconnectDelay
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxServerPingDelay <= 0 {
		cfg.MaxServerPingDelay = 10 * time.Second
	}
	if cfg.EventQueueSize <= 0 {
		cfg.EventQueueSize = 1024
	}
}

type clientHandlers struct {
	connecting         func(ConnectingEvent)
	connected          func(ConnectedEvent)
	disconnected       func(DisconnectedEvent)
	err                func(ErrorEvent)
	message            func(MessageEvent)
	serverSubscribed   func(ServerSubscribedEvent)
	serverUnsubscribed func(ServerUnsubscribedEvent)
	serverPublication  func(ServerPublicationEvent)
	serverJoin         func(ServerJoinEvent)
	serverLeave        func(ServerLeaveEvent)
}

// Client is a real-time connection to a Spinwire server over the bidirectional gRPC
// stream. Create it with NewClient, register handlers, then Connect. It is safe for
// concurrent use.
type Client struct {
	cfg    Config
	conn   *grpc.ClientConn
	rpc    streamv1.ClientStreamServiceClient
	events *eventQueue

	mu           sync.Mutex
	state        State
	changed      chan struct{} // closed and replaced on every state change
	stopErr      error         // why the client stopped (StateDisconnected after a run)
	session      *session      // the connected session, nil unless StateConnected
	clientID     string
	token        string
	tokenExpired bool
	subs         map[string]*Subscription
	serverSubs   map[string]*serverSub
	h            clientHandlers
	runCancel    context.CancelFunc
	runDone      chan struct{}
	refreshTimer *time.Timer
}

// NewClient prepares a client for the grpc_stream endpoint at target ("host:port").
// Nothing is sent until Connect.
func NewClient(target string, cfg Config) (*Client, error) {
	cfg.applyDefaults()
	conn, err := dial(target, cfg.DialOptions)
	if err != nil {
		return nil, fmt.Errorf("spinwire: dial %q: %w", target, err)
	}
	return &Client{
		cfg:        cfg,
		conn:       conn,
		rpc:        streamv1.NewClientStreamServiceClient(conn),
		events:     newEventQueue(cfg.EventQueueSize),
		changed:    make(chan struct{}),
		token:      cfg.Token,
		subs:       make(map[string]*Subscription),
		serverSubs: make(map[string]*serverSub),
	}, nil
}

// Handler registration. Handlers run on the client's event goroutine, one at a time,
// in the order the events happened. Register them before Connect to see every event.

// OnConnecting is called when the client starts (re)connecting.
func (c *Client) OnConnecting(h func(ConnectingEvent)) { c.setHandler(func() { c.h.connecting = h }) }

// OnConnected is called after each successful connect.
func (c *Client) OnConnected(h func(ConnectedEvent)) { c.setHandler(func() { c.h.connected = h }) }

// OnDisconnected is called when the client stops for good (terminal code or Close).
func (c *Client) OnDisconnected(h func(DisconnectedEvent)) {
	c.setHandler(func() { c.h.disconnected = h })
}

// OnError is called for problems the client recovers from by itself.
func (c *Client) OnError(h func(ErrorEvent)) { c.setHandler(func() { c.h.err = h }) }

// OnMessage is called for asynchronous messages sent to this connection.
func (c *Client) OnMessage(h func(MessageEvent)) { c.setHandler(func() { c.h.message = h }) }

// OnServerSubscribed is called when a server-side subscription is established or
// re-established (with recovery) after a reconnect.
func (c *Client) OnServerSubscribed(h func(ServerSubscribedEvent)) {
	c.setHandler(func() { c.h.serverSubscribed = h })
}

// OnServerUnsubscribed is called when the server removes a server-side subscription.
func (c *Client) OnServerUnsubscribed(h func(ServerUnsubscribedEvent)) {
	c.setHandler(func() { c.h.serverUnsubscribed = h })
}

// OnServerPublication is called for publications in server-side subscriptions
// (channels from the token's channels/subs claims or the server API).
func (c *Client) OnServerPublication(h func(ServerPublicationEvent)) {
	c.setHandler(func() { c.h.serverPublication = h })
}

// OnServerJoin and OnServerLeave are called for presence changes in server-side
// subscriptions.
func (c *Client) OnServerJoin(h func(ServerJoinEvent)) { c.setHandler(func() { c.h.serverJoin = h }) }

func (c *Client) OnServerLeave(h func(ServerLeaveEvent)) {
	c.setHandler(func() { c.h.serverLeave = h })
}

func (c *Client) setHandler(set func()) {
	c.mu.Lock()
	set()
	c.mu.Unlock()
}

// emit queues h(ev); state events are never refused, data events are refused when the
// queue is full (the caller decides what that means). A nil handler accepts everything.
func emit[E any](q *eventQueue, h func(E), ev E, state bool) bool {
	if h == nil {
		return true
	}
	f := func() { h(ev) }
	if state {
		return q.pushState(f)
	}
	return q.push(f)
}

// State returns the current connection state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// ClientID returns the client id of the current (or last) connection.
func (c *Client) ClientID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clientID
}

// setState must be called with mu held.
func (c *Client) setState(s State) {
	c.state = s
	close(c.changed)
	c.changed = make(chan struct{})
}

// Connect starts the client and waits until it is connected. The client then keeps
// itself connected (reconnecting with backoff) until a terminal disconnect or Close;
// ctx only bounds this wait. Errors: ErrClientDisconnected wrapping what stopped the
// client (reach it with errors.As: *ReplyError with Code 109 for an expired token and
// no GetToken, *DisconnectError with a terminal code), ErrClientClosed, or ctx's error
// (the client keeps trying in the background; Close stops it).
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	switch c.state {
	case StateClosed:
		c.mu.Unlock()
		return ErrClientClosed
	case StateDisconnected:
		c.stopErr = nil
		c.setState(StateConnecting)
		emit(c.events, c.h.connecting, ConnectingEvent{Code: CodeClientClosed, Reason: "connect called"}, true)
		runCtx, cancel := context.WithCancel(context.Background())
		c.runCancel, c.runDone = cancel, make(chan struct{})
		go c.run(runCtx, c.runDone)
	}
	c.mu.Unlock()
	_, err := c.connectedSession(ctx)
	return err
}

// connectedSession waits for StateConnected and returns its session.
func (c *Client) connectedSession(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		state, changed, s, stopErr := c.state, c.changed, c.session, c.stopErr
		c.mu.Unlock()
		switch state {
		case StateConnected:
			return s, nil
		case StateClosed:
			return nil, ErrClientClosed
		case StateDisconnected:
			if stopErr != nil {
				return nil, fmt.Errorf("%w: %w", ErrClientDisconnected, stopErr)
			}
			return nil, ErrClientDisconnected
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close disconnects and releases the client. Pending calls fail; no handler is called
// after the final DisconnectedEvent. Safe to call from a handler.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.state == StateClosed {
		c.mu.Unlock()
		return nil
	}
	previous := c.state
	c.setState(StateClosed)
	cancel, done := c.runCancel, c.runDone
	c.stopTimers()
	for _, sub := range c.subs {
		sub.stopTimers()
		sub.notify()
	}
	if previous != StateDisconnected {
		emit(c.events, c.h.disconnected, DisconnectedEvent{Code: CodeClientClosed, Reason: "client closed"}, true)
	}
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	c.events.close()
	return c.conn.Close()
}

// stopTimers must be called with mu held.
func (c *Client) stopTimers() {
	if c.refreshTimer != nil {
		c.refreshTimer.Stop()
		c.refreshTimer = nil
	}
}
