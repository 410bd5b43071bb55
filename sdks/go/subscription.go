package spinwire

// Subscription: a client-side subscription to one channel. It remembers the stream
// position of positioned/recoverable channels so that resubscribing after a reconnect
// (or after an "insufficient state" unsubscribe from the server) recovers exactly the
// publications that were missed. All state is guarded by the owning Client's mutex.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifuge/protocol"
)

// SubscriptionState of a Subscription.
type SubscriptionState int

const (
	// SubStateUnsubscribed: not subscribed and not trying to be.
	SubStateUnsubscribed SubscriptionState = iota
	// SubStateSubscribing: waiting for the client to connect or for the server to
	// confirm (also after reconnects).
	SubStateSubscribing
	// SubStateSubscribed: the server confirmed the subscription.
	SubStateSubscribed
)

func (s SubscriptionState) String() string {
	switch s {
	case SubStateUnsubscribed:
		return "unsubscribed"
	case SubStateSubscribing:
		return "subscribing"
	case SubStateSubscribed:
		return "subscribed"
	}
	return fmt.Sprintf("SubscriptionState(%d)", int(s))
}

// SubscriptionConfig configures a Subscription.
type SubscriptionConfig struct {
	// Token is a subscription JWT (required for private "$" channels).
	Token string
	// GetToken returns a fresh subscription token; used when Token is empty or expired
	// and to refresh it before the subscription expires. Return an error wrapping
	// ErrUnauthorized to stop subscribing.
	GetToken func(ctx context.Context, channel string) (string, error)
	// Data is sent with the subscribe command (visible to a subscribe proxy).
	Data []byte
	// JoinLeave asks for join/leave events (needs presence permission).
	JoinLeave bool
	// Positioned and Recoverable ask for stream positioning/recovery when the namespace
	// allows clients to choose (force_positioning/force_recovery impose them anyway).
	Positioned  bool
	Recoverable bool
}

// subscribeAttempt identifies one subscribe command, so that a late reply to an
// abandoned attempt is never taken for the reply to a newer one.
type subscribeAttempt struct {
	sess *session
	sent bool // guarded by c.mu, changed under cmdMu
}

type subHandlers struct {
	subscribing  func(SubscribingEvent)
	subscribed   func(SubscribedEvent)
	unsubscribed func(UnsubscribedEvent)
	err          func(SubscriptionErrorEvent)
	publication  func(PublicationEvent)
	join         func(JoinEvent)
	leave        func(LeaveEvent)
}

// Subscription is a client-side subscription created by Client.NewSubscription. It
// stays subscribed across reconnects until Unsubscribe.
type Subscription struct {
	c       *Client
	channel string
	cfg     SubscriptionConfig

	// cmdMu orders this subscription's subscribe and unsubscribe commands on the wire
	// the same way their state changes were decided. Never held by the reader.
	cmdMu sync.Mutex

	// Guarded by c.mu.
	state        SubscriptionState
	changed      chan struct{}
	err          error             // why the subscription ended (unsubscribed by an error)
	inflight     *subscribeAttempt // the outstanding subscribe command, if any
	recoverable  bool
	pos          StreamPosition
	hasPos       bool
	token        string
	tokenExpired bool
	h            subHandlers
	bo           backoff
	retryTimer   *time.Timer
	refreshTimer *time.Timer
	removed      bool
}

// NewSubscription registers a subscription to channel; call Subscribe to activate it.
// There can be one subscription per channel (ErrDuplicateSubscription).
func (c *Client) NewSubscription(channel string, cfg SubscriptionConfig) (*Subscription, error) {
	if channel == "" {
		return nil, errors.New("spinwire: empty channel")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateClosed {
		return nil, ErrClientClosed
	}
	if _, ok := c.subs[channel]; ok {
		return nil, ErrDuplicateSubscription
	}
	sub := &Subscription{
		c:       c,
		channel: channel,
		cfg:     cfg,
		changed: make(chan struct{}),
		token:   cfg.Token,
		bo:      backoff{min: c.cfg.MinReconnectDelay, max: c.cfg.MaxReconnectDelay},
	}
	c.subs[channel] = sub
	return sub, nil
}

// GetSubscription returns the subscription to channel, or nil.
func (c *Client) GetSubscription(channel string) *Subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subs[channel]
}

// RemoveSubscription unsubscribes sub and forgets it, so that the channel can be
// subscribed again with a new configuration.
func (c *Client) RemoveSubscription(ctx context.Context, sub *Subscription) error {
	err := sub.Unsubscribe(ctx)
	c.mu.Lock()
	if c.subs[sub.channel] == sub {
		delete(c.subs, sub.channel)
	}
	sub.removed = true
	c.mu.Unlock()
	return err
}

// Channel returns the subscription's channel.
func (s *Subscription) Channel() string { return s.channel }

// State returns the subscription state.
func (s *Subscription) State() SubscriptionState {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.state
}

// Handler registration; handlers run on the client's event goroutine, in order with
// the client's own events.

func (s *Subscription) OnSubscribing(h func(SubscribingEvent)) {
	s.c.setHandler(func() { s.h.subscribing = h })
}

func (s *Subscription) OnSubscribed(h func(SubscribedEvent)) {
	s.c.setHandler(func() { s.h.subscribed = h })
}

func (s *Subscription) OnUnsubscribed(h func(UnsubscribedEvent)) {
	s.c.setHandler(func() { s.h.unsubscribed = h })
}

func (s *Subscription) OnError(h func(SubscriptionErrorEvent)) {
	s.c.setHandler(func() { s.h.err = h })
}

func (s *Subscription) OnPublication(h func(PublicationEvent)) {
	s.c.setHandler(func() { s.h.publication = h })
}

func (s *Subscription) OnJoin(h func(JoinEvent)) { s.c.setHandler(func() { s.h.join = h }) }

func (s *Subscription) OnLeave(h func(LeaveEvent)) { s.c.setHandler(func() { s.h.leave = h }) }

// Subscribe activates the subscription and waits until the server confirms it. It may
// be called before Connect (it then waits for the connection). The subscription stays
// active, and is re-established after reconnects, until Unsubscribe, even if ctx ends
// first. Errors: *ReplyError when the server refused for good (e.g. 103 permission
// denied), ErrClientClosed, ErrClientDisconnected when the client stopped, ctx's error.
func (s *Subscription) Subscribe(ctx context.Context) error {
	c := s.c
	c.mu.Lock()
	if c.state == StateClosed {
		c.mu.Unlock()
		return ErrClientClosed
	}
	if s.removed {
		c.mu.Unlock()
		return ErrSubscriptionUnsubscribed
	}
	if s.state == SubStateUnsubscribed {
		s.err = nil
		s.bo.reset()
		s.setState(SubStateSubscribing)
		emit(c.events, s.h.subscribing, SubscribingEvent{Code: UnsubscribeCodeCalled, Reason: "subscribe called"}, true)
		if c.state == StateConnected {
			go c.subscribeOn(c.session, s)
		}
	}
	c.mu.Unlock()
	return s.waitSubscribed(ctx)
}

func (s *Subscription) waitSubscribed(ctx context.Context) error {
	c := s.c
	for {
		c.mu.Lock()
		state, err, subChanged, clientChanged := s.state, s.err, s.changed, c.changed
		clientState, stopErr := c.state, c.stopErr
		c.mu.Unlock()
		switch {
		case state == SubStateSubscribed:
			return nil
		case state == SubStateUnsubscribed:
			if err != nil {
				return err
			}
			return ErrSubscriptionUnsubscribed
		case clientState == StateClosed:
			return ErrClientClosed
		case clientState == StateDisconnected && stopErr != nil:
			return fmt.Errorf("%w: %w", ErrClientDisconnected, stopErr)
		}
		select {
		case <-subChanged:
		case <-clientChanged:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Unsubscribe deactivates the subscription (UnsubscribedEvent with
// UnsubscribeCodeCalled) and tells the server if connected.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	c := s.c
	s.cmdMu.Lock()
	c.mu.Lock()
	if s.state == SubStateUnsubscribed {
		c.mu.Unlock()
		s.cmdMu.Unlock()
		return nil
	}
	active := s.state == SubStateSubscribed || (s.inflight != nil && s.inflight.sent)
	sess := c.session
	s.setUnsubscribed(UnsubscribeCodeCalled, "unsubscribe called", nil)
	c.mu.Unlock()
	if !active || sess == nil {
		s.cmdMu.Unlock()
		return nil
	}
	wait, err := c.send(sess, &protocol.Command{Unsubscribe: &protocol.UnsubscribeRequest{Channel: s.channel}})
	s.cmdMu.Unlock()
	if err == nil {
		_, err = wait(ctx)
	}
	if errors.Is(err, ErrConnectionLost) {
		return nil // the server dropped the subscription with the connection
	}
	return err
}

// Publish publishes data into the subscription's channel.
func (s *Subscription) Publish(ctx context.Context, data []byte) error {
	return s.c.Publish(ctx, s.channel, data)
}

// Presence returns the clients in the channel, keyed by client id.
func (s *Subscription) Presence(ctx context.Context) (map[string]ClientInfo, error) {
	return s.c.Presence(ctx, s.channel)
}

// PresenceStats returns the channel's presence counters.
func (s *Subscription) PresenceStats(ctx context.Context) (PresenceStats, error) {
	return s.c.PresenceStats(ctx, s.channel)
}

// History reads the channel's history.
func (s *Subscription) History(ctx context.Context, opts HistoryOptions) (HistoryResult, error) {
	return s.c.History(ctx, s.channel, opts)
}

// The methods below are called with c.mu held.

func (s *Subscription) setState(state SubscriptionState) {
	s.state = state
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Subscription) notify() { s.setState(s.state) }

func (s *Subscription) stopTimers() {
	if s.retryTimer != nil {
		s.retryTimer.Stop()
		s.retryTimer = nil
	}
	if s.refreshTimer != nil {
		s.refreshTimer.Stop()
		s.refreshTimer = nil
	}
}

func (s *Subscription) setUnsubscribed(code uint32, reason string, err error) {
	s.stopTimers()
	s.inflight = nil
	s.err = err
	s.setState(SubStateUnsubscribed)
	emit(s.c.events, s.h.unsubscribed, UnsubscribedEvent{Code: code, Reason: reason}, true)
}

// connectionLost keeps an active subscription waiting for the next connection.
func (s *Subscription) connectionLost(reason *DisconnectError) {
	s.inflight = nil
	s.stopTimers()
	if s.state == SubStateSubscribed {
		s.setState(SubStateSubscribing)
		emit(s.c.events, s.h.subscribing, SubscribingEvent{Code: reason.Code, Reason: reason.Reason}, true)
	}
}

// serverUnsubscribed handles an unsubscribe push: codes >= 2500 mean "resubscribe
// (recovering)", lower ones end the subscription.
func (s *Subscription) serverUnsubscribed(sess *session, code uint32, reason string) {
	if s.state == SubStateUnsubscribed {
		return
	}
	if code < 2500 {
		s.setUnsubscribed(code, reason, nil)
		return
	}
	s.stopTimers()
	if code == 2501 {
		s.tokenExpired = true
	}
	s.setState(SubStateSubscribing)
	emit(s.c.events, s.h.subscribing, SubscribingEvent{Code: code, Reason: reason}, true)
	go s.c.subscribeOn(sess, s)
}

// deliver queues a publication and advances the position only if it was queued.
func (s *Subscription) deliver(pub *protocol.Publication) bool {
	if !emit(s.c.events, s.h.publication, PublicationEvent{Publication: pubFromProto(pub)}, false) {
		return false
	}
	if pub.GetOffset() > 0 {
		s.pos.Offset = pub.GetOffset()
	}
	return true
}

// request builds the subscribe command, recovering from the last position when the
// channel is recoverable.
func (s *Subscription) request() *protocol.SubscribeRequest {
	req := &protocol.SubscribeRequest{
		Channel:     s.channel,
		Data:        s.cfg.Data,
		JoinLeave:   s.cfg.JoinLeave,
		Positioned:  s.cfg.Positioned,
		Recoverable: s.cfg.Recoverable,
	}
	if s.recoverable && s.hasPos {
		req.Recover, req.Epoch, req.Offset = true, s.pos.Epoch, s.pos.Offset
	}
	return req
}

// subscribeOn sends a subscribe command on sess (fetching a token first if needed).
// Runs on its own goroutine because GetToken and Send may block.
func (c *Client) subscribeOn(sess *session, s *Subscription) {
	c.mu.Lock()
	if c.session != sess || s.state != SubStateSubscribing || s.inflight != nil {
		c.mu.Unlock()
		return
	}
	attempt := &subscribeAttempt{sess: sess}
	s.inflight = attempt
	req := s.request()
	req.Token = s.token
	needToken := (s.token == "" || s.tokenExpired) && s.cfg.GetToken != nil
	c.mu.Unlock()

	if needToken {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
		token, err := s.cfg.GetToken(ctx, s.channel)
		cancel()
		c.mu.Lock()
		if s.inflight != attempt {
			c.mu.Unlock()
			return // unsubscribed or disconnected meanwhile
		}
		if err != nil {
			s.inflight = nil
			err = fmt.Errorf("spinwire: get subscription token for %q: %w", s.channel, err)
			emit(c.events, s.h.err, SubscriptionErrorEvent{Err: err}, false)
			if errors.Is(err, ErrUnauthorized) {
				s.setUnsubscribed(CodeUnauthorized, "unauthorized", err)
			} else {
				c.retrySubscribe(s)
			}
			c.mu.Unlock()
			return
		}
		s.token, s.tokenExpired = token, false
		req.Token = token
		c.mu.Unlock()
	}

	s.cmdMu.Lock()
	defer s.cmdMu.Unlock()
	c.mu.Lock()
	current := s.inflight == attempt
	attempt.sent = current
	c.mu.Unlock()
	if !current {
		return // Unsubscribe won the race; nothing was sent
	}
	if _, err := sess.call(&protocol.Command{Subscribe: req}, func(r *protocol.Reply, err error) {
		c.handleSubscribeReply(attempt, s, r, err)
	}); err != nil {
		c.mu.Lock()
		if s.inflight == attempt {
			s.inflight = nil // the reconnect resubscribes
		}
		c.mu.Unlock()
	}
}

// handleSubscribeReply runs on the reader goroutine, so the subscribed event and the
// recovered publications are queued before any live publication that follows.
func (c *Client) handleSubscribeReply(attempt *subscribeAttempt, s *Subscription, r *protocol.Reply, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.inflight != attempt {
		return // abandoned: unsubscribed (the unsubscribe went out after it) or disconnected
	}
	s.inflight = nil
	if err != nil {
		return // connection lost: resubscribed after the reconnect
	}
	if r.GetError() != nil {
		c.subscribeFailed(s, replyError(r.GetError()))
		return
	}
	sess := attempt.sess
	res := r.GetSubscribe()
	s.err = nil
	s.bo.reset()
	s.recoverable = res.GetRecoverable()
	ev := SubscribedEvent{
		WasRecovering: res.GetWasRecovering(),
		Recovered:     res.GetRecovered(),
		Recoverable:   res.GetRecoverable(),
		Positioned:    res.GetPositioned(),
		Data:          res.GetData(),
	}
	if res.GetRecoverable() || res.GetPositioned() {
		// When recovered, Offset is our own position and the publications advance it;
		// otherwise it is the stream top.
		s.pos, s.hasPos = StreamPosition{Offset: res.GetOffset(), Epoch: res.GetEpoch()}, true
		pos := s.pos
		ev.StreamPosition = &pos
	}
	s.setState(SubStateSubscribed)
	emit(c.events, s.h.subscribed, ev, true)
	for _, pub := range res.GetPublications() {
		if !s.deliver(pub) {
			c.overflow(sess)
			return
		}
	}
	if res.GetExpires() && res.GetTtl() > 0 {
		s.scheduleRefresh(sess, time.Duration(res.GetTtl())*time.Second)
	}
}

// subscribeFailed retries temporary failures and expired tokens (with GetToken), and
// ends the subscription otherwise. Called with c.mu held.
func (c *Client) subscribeFailed(s *Subscription, err *ReplyError) {
	emit(c.events, s.h.err, SubscriptionErrorEvent{Err: err}, false)
	retry := err.Temporary || err.Code < 100
	if err.Code == 109 {
		s.tokenExpired = true
		retry = s.cfg.GetToken != nil
	}
	if retry {
		c.retrySubscribe(s)
		return
	}
	s.setUnsubscribed(err.Code, err.Message, err)
}

// retrySubscribe schedules another subscribe attempt with backoff. Called with c.mu held.
func (c *Client) retrySubscribe(s *Subscription) {
	if s.retryTimer != nil {
		s.retryTimer.Stop()
	}
	s.retryTimer = time.AfterFunc(s.bo.next(), func() {
		c.mu.Lock()
		sess := c.session
		ok := sess != nil && s.state == SubStateSubscribing && s.inflight == nil
		c.mu.Unlock()
		if ok {
			c.subscribeOn(sess, s)
		}
	})
}

// scheduleRefresh refreshes the subscription token before the subscription expires.
// Called with c.mu held.
func (s *Subscription) scheduleRefresh(sess *session, after time.Duration) {
	if s.refreshTimer != nil {
		s.refreshTimer.Stop()
	}
	s.refreshTimer = time.AfterFunc(after, func() { s.refresh(sess) })
}

func (s *Subscription) refresh(sess *session) {
	c := s.c
	if s.cfg.GetToken == nil {
		return // the server ends the subscription with 2501 and we resubscribe
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	fail := func(err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		emit(c.events, s.h.err, SubscriptionErrorEvent{Err: err}, false)
		if s.state == SubStateSubscribed && c.session == sess {
			s.scheduleRefresh(sess, c.cfg.MaxReconnectDelay/4)
		}
	}
	token, err := s.cfg.GetToken(ctx, s.channel)
	if err != nil {
		fail(fmt.Errorf("spinwire: refresh subscription token for %q: %w", s.channel, err))
		return
	}
	reply, err := c.callOn(ctx, sess, &protocol.Command{SubRefresh: &protocol.SubRefreshRequest{Channel: s.channel, Token: token}})
	if err != nil {
		fail(fmt.Errorf("spinwire: refresh subscription %q: %w", s.channel, err))
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s.token = token
	if res := reply.GetSubRefresh(); res.GetExpires() && res.GetTtl() > 0 && s.state == SubStateSubscribed && c.session == sess {
		s.scheduleRefresh(sess, time.Duration(res.GetTtl())*time.Second)
	}
}
