package spinwire

// APIClient: the Centrifugo-compatible server API over gRPC. Each method takes the
// generated request message and returns the generated result message, so every field
// the server supports is reachable without a second layer of option types.

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifugo/api"
)

// DefaultAPITimeout bounds each server API call unless WithTimeout says otherwise.
const DefaultAPITimeout = 10 * time.Second

// APIClient calls the server API (grpc_api) of a Spinwire server. It is safe for
// concurrent use. Errors are *APIError when the server answered with an error, or the
// gRPC error (wrapped; status.FromError and status.Code still see the status) when the
// call itself failed, e.g. codes.Unauthenticated for a wrong API key.
type APIClient struct {
	conn    *grpc.ClientConn
	api     api.CentrifugoApiClient
	timeout time.Duration
}

type apiOptions struct {
	key     string
	timeout time.Duration
	dial    []grpc.DialOption
}

// APIOption configures NewAPIClient.
type APIOption func(*apiOptions)

// WithAPIKey sends `authorization: apikey <key>` with every call (grpc_api.key).
func WithAPIKey(key string) APIOption { return func(o *apiOptions) { o.key = key } }

// WithTimeout sets the per-call timeout (default DefaultAPITimeout; 0 means only the
// caller's context bounds a call).
func WithTimeout(d time.Duration) APIOption { return func(o *apiOptions) { o.timeout = d } }

// WithDialOptions adds gRPC dial options, e.g. grpc.WithTransportCredentials for TLS
// (the default is plaintext).
func WithDialOptions(opts ...grpc.DialOption) APIOption {
	return func(o *apiOptions) { o.dial = append(o.dial, opts...) }
}

// NewAPIClient prepares a client for the server API at target ("host:port"). The gRPC
// connection is established lazily, on the first call.
func NewAPIClient(target string, opts ...APIOption) (*APIClient, error) {
	o := apiOptions{timeout: DefaultAPITimeout}
	for _, opt := range opts {
		opt(&o)
	}
	dialOpts := o.dial
	if o.key != "" {
		dialOpts = append([]grpc.DialOption{grpc.WithPerRPCCredentials(apiKeyCredentials(o.key))}, dialOpts...)
	}
	conn, err := dial(target, dialOpts)
	if err != nil {
		return nil, fmt.Errorf("spinwire: dial server API %q: %w", target, err)
	}
	return &APIClient{conn: conn, api: api.NewCentrifugoApiClient(conn), timeout: o.timeout}, nil
}

// Close releases the gRPC connection.
func (c *APIClient) Close() error { return c.conn.Close() }

// apiKeyCredentials puts the API key into the call metadata.
type apiKeyCredentials string

var _ credentials.PerRPCCredentials = apiKeyCredentials("")

func (k apiKeyCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "apikey " + string(k)}, nil
}

// RequireTransportSecurity is false so the key also works on plaintext loopback
// connections; use TLS (WithDialOptions) on untrusted networks.
func (apiKeyCredentials) RequireTransportSecurity() bool { return false }

// ResponseError returns the *APIError carried by any server API response or batch reply
// (anything with GetError), or nil. Useful for Broadcast's per-channel responses and
// Batch replies.
func ResponseError(r interface{ GetError() *api.Error }) error {
	if e := r.GetError(); e != nil {
		return &APIError{Code: e.GetCode(), Message: e.GetMessage()}
	}
	return nil
}

func (c *APIClient) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// finish turns a gRPC failure or a response error into the SDK's error shape and
// substitutes an empty result for an absent one, so callers can always read fields.
func finish[R any](method string, resp interface{ GetError() *api.Error }, result *R, err error) (*R, error) {
	if err != nil {
		return nil, fmt.Errorf("spinwire: %s: %w", method, err)
	}
	if err := ResponseError(resp); err != nil {
		return nil, err
	}
	if result == nil {
		result = new(R)
	}
	return result, nil
}

// Publish publishes data into a channel.
func (c *APIClient) Publish(ctx context.Context, req *api.PublishRequest) (*api.PublishResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Publish(ctx, req)
	return finish("publish", resp, resp.GetResult(), err)
}

// Broadcast publishes the same data into several channels. Per-channel failures are in
// the result's Responses (see ResponseError).
func (c *APIClient) Broadcast(ctx context.Context, req *api.BroadcastRequest) (*api.BroadcastResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Broadcast(ctx, req)
	return finish("broadcast", resp, resp.GetResult(), err)
}

// Subscribe subscribes a user's connections to a channel on the server side.
func (c *APIClient) Subscribe(ctx context.Context, req *api.SubscribeRequest) (*api.SubscribeResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Subscribe(ctx, req)
	return finish("subscribe", resp, resp.GetResult(), err)
}

// Unsubscribe unsubscribes a user's connections from a channel.
func (c *APIClient) Unsubscribe(ctx context.Context, req *api.UnsubscribeRequest) (*api.UnsubscribeResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Unsubscribe(ctx, req)
	return finish("unsubscribe", resp, resp.GetResult(), err)
}

// Disconnect disconnects a user's connections (default code 3503 "force disconnect").
func (c *APIClient) Disconnect(ctx context.Context, req *api.DisconnectRequest) (*api.DisconnectResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Disconnect(ctx, req)
	return finish("disconnect", resp, resp.GetResult(), err)
}

// Refresh updates a user's connection expiration or info.
func (c *APIClient) Refresh(ctx context.Context, req *api.RefreshRequest) (*api.RefreshResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Refresh(ctx, req)
	return finish("refresh", resp, resp.GetResult(), err)
}

// Presence returns the clients subscribed to a channel.
func (c *APIClient) Presence(ctx context.Context, req *api.PresenceRequest) (*api.PresenceResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Presence(ctx, req)
	return finish("presence", resp, resp.GetResult(), err)
}

// PresenceStats returns the number of clients and users in a channel.
func (c *APIClient) PresenceStats(ctx context.Context, req *api.PresenceStatsRequest) (*api.PresenceStatsResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.PresenceStats(ctx, req)
	return finish("presence_stats", resp, resp.GetResult(), err)
}

// History reads a channel's publication history and its current stream position.
func (c *APIClient) History(ctx context.Context, req *api.HistoryRequest) (*api.HistoryResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.History(ctx, req)
	return finish("history", resp, resp.GetResult(), err)
}

// HistoryRemove removes a channel's publications (the stream position is kept).
func (c *APIClient) HistoryRemove(ctx context.Context, req *api.HistoryRemoveRequest) (*api.HistoryRemoveResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.HistoryRemove(ctx, req)
	return finish("history_remove", resp, resp.GetResult(), err)
}

// Channels lists active channels matching an optional pattern.
func (c *APIClient) Channels(ctx context.Context, req *api.ChannelsRequest) (*api.ChannelsResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Channels(ctx, req)
	return finish("channels", resp, resp.GetResult(), err)
}

// Info returns per-node statistics.
func (c *APIClient) Info(ctx context.Context) (*api.InfoResult, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Info(ctx, &api.InfoRequest{})
	return finish("info", resp, resp.GetResult(), err)
}

// Batch sends several commands in one call. The returned replies are in command order;
// each holds either its result or an error (see ResponseError).
func (c *APIClient) Batch(ctx context.Context, req *api.BatchRequest) ([]*api.Reply, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := c.api.Batch(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("spinwire: batch: %w", err)
	}
	return resp.GetReplies(), nil
}
