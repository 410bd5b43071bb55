package spinwire

// session is one bidirectional stream of a Client, i.e. one connection attempt: it
// sends commands, matches replies to pending calls by id, answers pings and watches for
// their absence. Pushes are handed to the Client. Everything the reader does happens on
// one goroutine, in stream order, which is what keeps subscribe results and the
// publications that follow them in order.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifuge/protocol"
)

// replyFunc receives the reply to one command, or the error that ended the session
// before it came. It runs on the reader goroutine and must not block.
type replyFunc func(*protocol.Reply, error)

type session struct {
	c      *Client
	stream grpc.BidiStreamingClient[protocol.Command, protocol.Reply]
	cancel context.CancelFunc
	done   chan struct{} // closed once the reader has exited and pending calls failed

	sendMu sync.Mutex // gRPC streams allow one concurrent Send

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]replyFunc
	closed  bool             // the reader has exited
	reason  *DisconnectError // why the session ends; the first one recorded wins

	// Reader-goroutine only (set by the connect reply handler, which runs there).
	pong      bool
	pingLimit time.Duration
	pingTimer *time.Timer
}

func newSession(c *Client, stream grpc.BidiStreamingClient[protocol.Command, protocol.Reply], cancel context.CancelFunc) *session {
	return &session{
		c:       c,
		stream:  stream,
		cancel:  cancel,
		done:    make(chan struct{}),
		pending: make(map[uint32]replyFunc),
	}
}

// call sends cmd with a fresh id. If it returns nil, fn is called exactly once.
func (s *session) call(cmd *protocol.Command, fn replyFunc) (uint32, error) {
	s.mu.Lock()
	if s.closed || s.reason != nil {
		s.mu.Unlock()
		return 0, ErrConnectionLost
	}
	s.nextID++
	id := s.nextID
	cmd.Id = id
	s.pending[id] = fn
	s.mu.Unlock()
	if err := s.send(cmd); err != nil {
		// The reader sees the broken stream too and fails fn with everything else.
		s.close(&DisconnectError{Code: CodeTransportClosed, Reason: "send: " + err.Error()})
	}
	return id, nil
}

// forget drops a pending call whose caller stopped waiting.
func (s *session) forget(id uint32) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

func (s *session) send(cmd *protocol.Command) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(cmd)
}

// close ends the session for reason (kept unless one was recorded before).
func (s *session) close(reason *DisconnectError) {
	s.mu.Lock()
	if s.reason == nil {
		s.reason = reason
	}
	s.mu.Unlock()
	s.cancel()
}

// ending tells whether the session is closed or closing; pushes are then ignored.
func (s *session) ending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed || s.reason != nil
}

// endReason is why the session ended; valid once done is closed.
func (s *session) endReason() *DisconnectError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// armPing starts watching for server pings: if nothing at all arrives for limit, the
// connection is considered dead. Reader goroutine only.
func (s *session) armPing(limit time.Duration) {
	s.pingLimit = limit
	s.pingTimer = time.AfterFunc(limit, func() {
		s.close(&DisconnectError{Code: CodeNoPing, Reason: "no ping"})
	})
}

func (s *session) readLoop() {
	defer close(s.done)
	for {
		reply, err := s.stream.Recv()
		if err != nil {
			s.finish(err)
			return
		}
		if s.pingTimer != nil {
			s.pingTimer.Reset(s.pingLimit)
		}
		switch {
		case reply.GetId() > 0:
			s.mu.Lock()
			fn := s.pending[reply.GetId()]
			delete(s.pending, reply.GetId())
			s.mu.Unlock()
			if fn != nil {
				fn(reply, nil)
			}
		case reply.GetPush() != nil:
			s.c.handlePush(s, reply.GetPush())
		default:
			// An empty reply is a ping. The pong is an empty command; without it the
			// server closes the connection with 3012.
			if s.pong {
				if err := s.send(&protocol.Command{}); err != nil {
					s.close(&DisconnectError{Code: CodeTransportClosed, Reason: "send pong: " + err.Error()})
				}
			}
		}
	}
}

// finish records why the stream ended and fails every pending call.
func (s *session) finish(err error) {
	if s.pingTimer != nil {
		s.pingTimer.Stop()
	}
	s.mu.Lock()
	s.closed = true
	if s.reason == nil {
		reason := "stream ended"
		if !errors.Is(err, io.EOF) {
			reason = fmt.Sprintf("stream error: %v", err)
		}
		s.reason = &DisconnectError{Code: CodeTransportClosed, Reason: reason}
	}
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	s.cancel()
	for _, fn := range pending {
		fn(nil, ErrConnectionLost)
	}
}
