package spinwire

// UniStream: a consumer of the unidirectional gRPC stream
// (centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume). The server sends a
// connect push, then pushes for the connection's server-side subscriptions, and ends
// with a disconnect push. There is no reconnect logic here: a uni stream is one session.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifuge/protocol"
	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifugo/unistream"
)

// UniStream is one unidirectional session. Recv is not safe for concurrent use.
type UniStream struct {
	conn       *grpc.ClientConn
	cancel     context.CancelFunc
	stream     grpc.ServerStreamingClient[protocol.Push]
	disconnect *DisconnectError
	err        error
	closeOnce  sync.Once
	closeErr   error
}

// ConsumeUniStream opens a uni stream at target (the uni_grpc endpoint, "host:port").
// req carries the connection token (its channels/subs claims decide the server-side
// subscriptions) and optional recovery positions in Subs; Name and Version default to
// "go" and Version. The stream lives until ctx ends, the server disconnects, or Close.
func ConsumeUniStream(ctx context.Context, target string, req *protocol.ConnectRequest, opts ...grpc.DialOption) (*UniStream, error) {
	conn, err := dial(target, opts)
	if err != nil {
		return nil, fmt.Errorf("spinwire: dial %q: %w", target, err)
	}
	if req == nil {
		req = &protocol.ConnectRequest{}
	} else {
		req = proto.Clone(req).(*protocol.ConnectRequest)
	}
	if req.Name == "" {
		req.Name = "go"
	}
	if req.Version == "" {
		req.Version = Version
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := unistream.NewCentrifugoUniStreamClient(conn).Consume(sctx, req)
	if err != nil {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("spinwire: open uni stream: %w", err)
	}
	return &UniStream{conn: conn, cancel: cancel, stream: stream}, nil
}

// Recv returns the next push: first the connect push (Push.Connect, with the client id
// and the server-side subscriptions), then publications, joins, leaves and so on. Pings
// (empty pushes) are skipped. When the server ends the session Recv returns a
// *DisconnectError with the disconnect code and reason; when the stream ends without a
// disconnect push it returns io.EOF, or the (wrapped) gRPC error if it failed.
func (u *UniStream) Recv() (*protocol.Push, error) {
	for {
		if u.err != nil {
			return nil, u.err
		}
		p, err := u.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				u.err = io.EOF
			} else {
				u.err = fmt.Errorf("spinwire: uni stream: %w", err)
			}
			u.Close()
			return nil, u.err
		}
		if d := p.GetDisconnect(); d != nil {
			u.disconnect = &DisconnectError{Code: d.GetCode(), Reason: d.GetReason()}
			u.err = u.disconnect
			u.Close()
			return nil, u.err
		}
		if proto.Size(p) == 0 {
			continue // ping: nothing to answer on a uni stream
		}
		return p, nil
	}
}

// Disconnect returns the server's disconnect, once Recv has reported it.
func (u *UniStream) Disconnect() *DisconnectError { return u.disconnect }

// Close ends the stream and releases its connection.
func (u *UniStream) Close() error {
	u.closeOnce.Do(func() {
		u.cancel()
		u.closeErr = u.conn.Close()
	})
	return u.closeErr
}
