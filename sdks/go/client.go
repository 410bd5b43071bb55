package spinwire

// Client: the real-time client over spinwire.stream.v1.ClientStreamService/Connect. It
// owns the connection lifecycle (connect, reconnect with backoff, token refresh),
// server-side subscriptions, and the registry of client-side Subscriptions.
//
// Concurrency: one mutex (mu) guards the client and all its subscriptions. Handlers
// never run under it: they are queued (eventQueue) and called in order on the
// dispatcher goroutine, so a handler may call any client method.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifuge/protocol"
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

// serverSub tracks the stream position of a server-side subscription for recovery.
type serverSub struct {
	recoverable bool
	pos         StreamPosition
	hasPos      bool
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
// ctx only bounds this wait. Errors: the connect error that stopped the client (e.g.
// *ReplyError with Code 109 for an expired token and no GetToken, *DisconnectError
// with a terminal code), ErrClientClosed, or ctx's error (the client keeps trying).
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
				return nil, stopErr
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

// run is the connection loop: connect, serve the session, back off, repeat, until a
// terminal disconnect or ctx (Close) ends it.
func (c *Client) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	bo := backoff{min: c.cfg.MinReconnectDelay, max: c.cfg.MaxReconnectDelay}
	for {
		// New attempts produce state events; wait until handlers have caught up.
		if c.events.waitRoom(ctx) != nil {
			return
		}
		s, err := c.connectOnce(ctx)
		if ctx.Err() != nil {
			if s != nil {
				s.close(&DisconnectError{Code: CodeClientClosed, Reason: "client closed"})
				<-s.done
			}
			return
		}
		if err != nil {
			if c.connectFailed(err) {
				return
			}
		} else {
			bo.reset()
			select {
			case <-s.done:
			case <-ctx.Done():
				s.close(&DisconnectError{Code: CodeClientClosed, Reason: "client closed"})
				<-s.done
				return
			}
			if c.sessionEnded(s.endReason()) {
				return
			}
		}
		select {
		case <-time.After(bo.next()):
		case <-ctx.Done():
			return
		}
	}
}

// connectOnce opens a stream and performs the connect handshake. On success the
// session is connected and its reader running.
func (c *Client) connectOnce(ctx context.Context) (*session, error) {
	token, err := c.connectionToken(ctx)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.Connect(sctx)
	if err != nil {
		cancel()
		return nil, &DisconnectError{Code: CodeTransportClosed, Reason: "open stream: " + err.Error()}
	}
	s := newSession(c, stream, cancel)
	go s.readLoop()

	c.mu.Lock()
	req := &protocol.ConnectRequest{
		Token:   token,
		Data:    c.cfg.Data,
		Name:    c.cfg.Name,
		Version: c.cfg.Version,
		Headers: c.cfg.Headers,
		Subs:    c.serverSubRecovery(),
	}
	c.mu.Unlock()
	result := make(chan error, 1)
	if _, err := s.call(&protocol.Command{Connect: req}, func(r *protocol.Reply, err error) {
		result <- c.handleConnectReply(s, r, err)
	}); err != nil {
		s.close(&DisconnectError{Code: CodeTransportClosed, Reason: "connect not sent"})
		<-s.done
		return nil, s.endReason()
	}
	timer := time.NewTimer(c.cfg.Timeout)
	defer timer.Stop()
	timedOut := false
	select {
	case err = <-result:
	case <-timer.C:
		timedOut = true
		s.close(&DisconnectError{Code: CodeConnectTimeout, Reason: "connect timeout"})
		err = <-result // closing the session fails the pending connect, so this comes
	case <-ctx.Done():
		s.close(&DisconnectError{Code: CodeClientClosed, Reason: "client closed"})
		err = <-result
	}
	if err == nil {
		return s, nil // connected (even if it ended meanwhile: run sees s.done)
	}
	s.close(&DisconnectError{Code: CodeTransportClosed, Reason: "connect failed"})
	<-s.done
	if timedOut || errors.Is(err, ErrConnectionLost) {
		// A disconnect push (e.g. 3500 invalid token) or a timeout explains it better.
		return nil, s.endReason()
	}
	return nil, err
}

func (c *Client) connectionToken(ctx context.Context) (string, error) {
	c.mu.Lock()
	token, expired := c.token, c.tokenExpired
	c.mu.Unlock()
	if (token != "" && !expired) || c.cfg.GetToken == nil {
		return token, nil
	}
	tctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	token, err := c.cfg.GetToken(tctx)
	if err != nil {
		return "", fmt.Errorf("spinwire: get connection token: %w", err)
	}
	c.mu.Lock()
	c.token, c.tokenExpired = token, false
	c.mu.Unlock()
	return token, nil
}

// serverSubRecovery asks the server to recover server-side subscriptions from their
// last known positions. Called with mu held.
func (c *Client) serverSubRecovery() map[string]*protocol.SubscribeRequest {
	var subs map[string]*protocol.SubscribeRequest
	for ch, ss := range c.serverSubs {
		if !ss.recoverable || !ss.hasPos {
			continue
		}
		if subs == nil {
			subs = make(map[string]*protocol.SubscribeRequest)
		}
		subs[ch] = &protocol.SubscribeRequest{Recover: true, Epoch: ss.pos.Epoch, Offset: ss.pos.Offset}
	}
	return subs
}

// handleConnectReply runs on the reader goroutine so that the server-side subscription
// state exists before the first push that follows the reply is handled.
func (c *Client) handleConnectReply(s *session, r *protocol.Reply, err error) error {
	if err != nil {
		return err
	}
	if r.GetError() != nil {
		return replyError(r.GetError())
	}
	res := r.GetConnect()
	if res == nil {
		return &DisconnectError{Code: CodeTransportClosed, Reason: "connect reply without result"}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != StateConnecting || s.ending() {
		return ErrConnectionLost
	}
	s.pong = res.GetPong()
	if res.GetPing() > 0 {
		s.armPing(time.Duration(res.GetPing())*time.Second + c.cfg.MaxServerPingDelay)
	}
	c.session = s
	c.clientID = res.GetClient()
	c.setState(StateConnected)
	emit(c.events, c.h.connected, ConnectedEvent{ClientID: res.GetClient(), Version: res.GetVersion(), Data: res.GetData()}, true)
	c.applyServerSubs(s, res.GetSubs())
	for _, sub := range c.subs {
		if sub.state == SubStateSubscribing {
			go c.subscribeOn(s, sub)
		}
	}
	if res.GetExpires() && res.GetTtl() > 0 {
		c.scheduleRefresh(s, time.Duration(res.GetTtl())*time.Second)
	}
	return nil
}

// connectFailed decides whether a failed attempt stops the client (true) or is
// retried. Codes follow the JS SDK: 109 refreshes the token, temporary errors and
// SDK-level codes retry, other errors stop.
func (c *Client) connectFailed(err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != StateConnecting {
		return true
	}
	var re *ReplyError
	var de *DisconnectError
	switch {
	case errors.Is(err, ErrUnauthorized):
		c.stop(CodeUnauthorized, "unauthorized", err)
		return true
	case errors.As(err, &re):
		if re.Code == 109 {
			c.tokenExpired = true
			if c.cfg.GetToken == nil {
				c.stop(re.Code, re.Message, re)
				return true
			}
		} else if !re.Temporary && re.Code >= 100 {
			c.stop(re.Code, re.Message, re)
			return true
		}
	case errors.As(err, &de):
		if !de.Reconnect() {
			c.stop(de.Code, de.Reason, de)
			return true
		}
	}
	emit(c.events, c.h.err, ErrorEvent{Err: err}, false)
	return false
}

// sessionEnded moves the client to connecting (true = stop: terminal code or closed).
func (c *Client) sessionEnded(reason *DisconnectError) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.session = nil
	c.stopTimers()
	for _, sub := range c.subs {
		sub.connectionLost(reason)
	}
	if c.state == StateClosed {
		return true
	}
	if !reason.Reconnect() {
		c.stop(reason.Code, reason.Reason, reason)
		return true
	}
	if reason.Code == 3005 {
		c.tokenExpired = true // the next connect needs a new token
	}
	c.setState(StateConnecting)
	emit(c.events, c.h.connecting, ConnectingEvent{Code: reason.Code, Reason: reason.Reason}, true)
	return false
}

// stop moves to StateDisconnected for good. Called with mu held.
func (c *Client) stop(code uint32, reason string, err error) {
	c.stopErr = err
	c.setState(StateDisconnected)
	emit(c.events, c.h.disconnected, DisconnectedEvent{Code: code, Reason: reason}, true)
}

// overflow reconnects because handlers fell behind; the offsets of positioned
// subscriptions stop at the last queued publication, so recovery resumes right there.
// Called with mu held.
func (c *Client) overflow(s *session) {
	if s.ending() {
		return
	}
	emit(c.events, c.h.err, ErrorEvent{Err: errors.New("spinwire: event queue overflow, reconnecting")}, true)
	s.close(&DisconnectError{Code: CodeEventQueueOverflow, Reason: "event queue overflow"})
}

// scheduleRefresh refreshes the connection token before the connection expires.
// Called with mu held.
func (c *Client) scheduleRefresh(s *session, after time.Duration) {
	c.stopTimers()
	c.refreshTimer = time.AfterFunc(after, func() { c.refreshConnection(s) })
}

func (c *Client) refreshConnection(s *session) {
	if c.cfg.GetToken == nil {
		// Without a way to get a token the server closes the connection with 3005; the
		// reconnect then fails with 109 and the client stops.
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	retry := func(err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		emit(c.events, c.h.err, ErrorEvent{Err: err}, false)
		if c.session == s {
			c.scheduleRefresh(s, c.cfg.MaxReconnectDelay/4)
		}
	}
	token, err := c.cfg.GetToken(ctx)
	if err != nil {
		retry(fmt.Errorf("spinwire: refresh connection token: %w", err))
		return
	}
	c.mu.Lock()
	c.token, c.tokenExpired = token, false
	c.mu.Unlock()
	reply, err := c.callOn(ctx, s, &protocol.Command{Refresh: &protocol.RefreshRequest{Token: token}})
	if err != nil {
		retry(fmt.Errorf("spinwire: refresh connection: %w", err))
		return
	}
	if res := reply.GetRefresh(); res.GetExpires() && res.GetTtl() > 0 {
		c.mu.Lock()
		if c.session == s {
			c.scheduleRefresh(s, time.Duration(res.GetTtl())*time.Second)
		}
		c.mu.Unlock()
	}
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

// callOn sends cmd on s and waits for its reply; a reply error becomes *ReplyError.
func (c *Client) callOn(ctx context.Context, s *session, cmd *protocol.Command) (*protocol.Reply, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	type result struct {
		reply *protocol.Reply
		err   error
	}
	ch := make(chan result, 1)
	id, err := s.call(cmd, func(r *protocol.Reply, err error) { ch <- result{r, err} })
	if err != nil {
		return nil, err
	}
	select {
	case res := <-ch:
		if res.err != nil {
			return nil, res.err
		}
		if res.reply.GetError() != nil {
			return nil, replyError(res.reply.GetError())
		}
		return res.reply, nil
	case <-ctx.Done():
		s.forget(id)
		return nil, ctx.Err()
	}
}

// call waits for a connection (while connecting), then sends cmd on it.
func (c *Client) call(ctx context.Context, cmd *protocol.Command) (*protocol.Reply, error) {
	s, err := c.connectedSession(ctx)
	if err != nil {
		return nil, err
	}
	return c.callOn(ctx, s, cmd)
}

// Publish publishes data into channel from this client (the namespace must allow it).
func (c *Client) Publish(ctx context.Context, channel string, data []byte) error {
	_, err := c.call(ctx, &protocol.Command{Publish: &protocol.PublishRequest{Channel: channel, Data: data}})
	return err
}

// Presence returns the clients in channel, keyed by client id.
func (c *Client) Presence(ctx context.Context, channel string) (map[string]ClientInfo, error) {
	reply, err := c.call(ctx, &protocol.Command{Presence: &protocol.PresenceRequest{Channel: channel}})
	if err != nil {
		return nil, err
	}
	out := make(map[string]ClientInfo, len(reply.GetPresence().GetPresence()))
	for id, info := range reply.GetPresence().GetPresence() {
		out[id] = infoFromProto(info)
	}
	return out, nil
}

// PresenceStats counts the clients and distinct users in a channel.
type PresenceStats struct {
	NumClients uint32
	NumUsers   uint32
}

// PresenceStats returns presence counters for channel.
func (c *Client) PresenceStats(ctx context.Context, channel string) (PresenceStats, error) {
	reply, err := c.call(ctx, &protocol.Command{PresenceStats: &protocol.PresenceStatsRequest{Channel: channel}})
	if err != nil {
		return PresenceStats{}, err
	}
	res := reply.GetPresenceStats()
	return PresenceStats{NumClients: res.GetNumClients(), NumUsers: res.GetNumUsers()}, nil
}

// HistoryOptions select publications from a channel's history.
type HistoryOptions struct {
	// Limit: 0 returns only the current position, -1 all (capped by the server), N at
	// most N publications.
	Limit int32
	// Since returns publications after this position (before it with Reverse).
	Since   *StreamPosition
	Reverse bool
}

// HistoryResult is a page of history and the channel's current position.
type HistoryResult struct {
	Publications []Publication
	StreamPosition
}

// History reads channel history.
func (c *Client) History(ctx context.Context, channel string, opts HistoryOptions) (HistoryResult, error) {
	req := &protocol.HistoryRequest{Channel: channel, Limit: opts.Limit, Reverse: opts.Reverse}
	if opts.Since != nil {
		req.Since = &protocol.StreamPosition{Offset: opts.Since.Offset, Epoch: opts.Since.Epoch}
	}
	reply, err := c.call(ctx, &protocol.Command{History: req})
	if err != nil {
		return HistoryResult{}, err
	}
	res := reply.GetHistory()
	out := HistoryResult{StreamPosition: StreamPosition{Offset: res.GetOffset(), Epoch: res.GetEpoch()}}
	for _, p := range res.GetPublications() {
		out.Publications = append(out.Publications, pubFromProto(p))
	}
	return out, nil
}

func replyError(e *protocol.Error) *ReplyError {
	return &ReplyError{Code: e.GetCode(), Message: e.GetMessage(), Temporary: e.GetTemporary()}
}

func infoFromProto(i *protocol.ClientInfo) ClientInfo {
	return ClientInfo{User: i.GetUser(), Client: i.GetClient(), ConnInfo: i.GetConnInfo(), ChanInfo: i.GetChanInfo()}
}

func pubFromProto(p *protocol.Publication) Publication {
	pub := Publication{Offset: p.GetOffset(), Data: p.GetData(), Tags: p.GetTags()}
	if p.GetInfo() != nil {
		info := infoFromProto(p.GetInfo())
		pub.Info = &info
	}
	return pub
}
