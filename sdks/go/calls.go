package spinwire

// Request/reply calls on a connected Client (publish, presence, history) and the
// conversions from protocol messages to the SDK's types.

import (
	"context"

	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifuge/protocol"
)

// send sends cmd on s; wait then returns its reply (a reply error as *ReplyError).
// Splitting the two lets callers order sends under a lock without waiting under it.
func (c *Client) send(s *session, cmd *protocol.Command) (wait func(context.Context) (*protocol.Reply, error), err error) {
	type result struct {
		reply *protocol.Reply
		err   error
	}
	ch := make(chan result, 1)
	id, err := s.call(cmd, func(r *protocol.Reply, err error) { ch <- result{r, err} })
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) (*protocol.Reply, error) {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
			defer cancel()
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
	}, nil
}

// callOn sends cmd on s and waits for its reply.
func (c *Client) callOn(ctx context.Context, s *session, cmd *protocol.Command) (*protocol.Reply, error) {
	wait, err := c.send(s, cmd)
	if err != nil {
		return nil, err
	}
	return wait(ctx)
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
