package spinwire

// The connection loop of a Client: connect handshakes, reconnects with backoff, the
// decisions on connect errors and disconnect codes, and connection token refresh.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifuge/protocol"
)

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
