package spinwire_test

// Integration tests of the gRPC server API client.

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	spinwire "github.com/spinwire/spinwire/sdks/go"
	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifugo/api"
)

func TestAPIErrors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)

	_, err := newAPI(t).Publish(ctx, &api.PublishRequest{Channel: "nosuchnamespace:x", Data: []byte(`{}`)})
	var apiErr *spinwire.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != 102 {
		t.Fatalf("publish to unknown namespace: %v, want *APIError 102", err)
	}

	wrong, err := spinwire.NewAPIClient(srv.APIAddr, spinwire.WithAPIKey("wrong-key"))
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	_, err = wrong.Info(ctx)
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong key: %v (code %v), want Unauthenticated", err, status.Code(err))
	}
	if errors.As(err, &apiErr) {
		t.Fatalf("transport failure reported as APIError: %v", err)
	}

	slow, err := spinwire.NewAPIClient(srv.APIAddr, spinwire.WithAPIKey("k"), spinwire.WithTimeout(time.Nanosecond))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := slow.Info(ctx); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("1ns timeout: %v, want DeadlineExceeded", err)
	}
}

func TestAPIMethods(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := newAPI(t)
	user := unique("api-user")
	channel := unique("chat:api")
	other := unique("chat:api-other")

	// A connected client to observe server-side subscribe/unsubscribe and presence.
	client := newClient(t, spinwire.Config{Token: hsToken(t, user, spinwire.ConnectionClaims{TTL: time.Hour})})
	subscribed, onSubscribed := events[spinwire.ServerSubscribedEvent]()
	unsubscribed, onUnsubscribed := events[spinwire.ServerUnsubscribedEvent]()
	pubs, onPub := events[spinwire.ServerPublicationEvent]()
	client.OnServerSubscribed(onSubscribed)
	client.OnServerUnsubscribed(onUnsubscribed)
	client.OnServerPublication(onPub)
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}

	if _, err := a.Subscribe(ctx, &api.SubscribeRequest{User: user, Channel: channel}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, subscribed, "server-side subscribe"); ev.Channel != channel {
		t.Fatalf("subscribed = %+v", ev)
	}

	br, err := a.Broadcast(ctx, &api.BroadcastRequest{Channels: []string{channel, other, "nosuchnamespace:x"}, Data: []byte(`{"b":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	if len(br.GetResponses()) != 3 || spinwire.ResponseError(br.GetResponses()[0]) != nil {
		t.Fatalf("broadcast responses = %v", br.GetResponses())
	}
	var apiErr *spinwire.APIError
	if err := spinwire.ResponseError(br.GetResponses()[2]); !errors.As(err, &apiErr) || apiErr.Code != 102 {
		t.Fatalf("broadcast to unknown namespace: %v", err)
	}
	if p := next(t, pubs, "broadcast publication"); p.Channel != channel || string(p.Data) != `{"b":1}` {
		t.Fatalf("publication = %+v", p)
	}

	presence, err := a.Presence(ctx, &api.PresenceRequest{Channel: channel})
	if err != nil {
		t.Fatal(err)
	}
	if info, ok := presence.GetPresence()[client.ClientID()]; !ok || info.GetUser() != user {
		t.Fatalf("presence = %v", presence)
	}
	stats, err := a.PresenceStats(ctx, &api.PresenceStatsRequest{Channel: channel})
	if err != nil || stats.GetNumClients() != 1 || stats.GetNumUsers() != 1 {
		t.Fatalf("presence stats = %v, %v", stats, err)
	}
	channels, err := a.Channels(ctx, &api.ChannelsRequest{Pattern: channel})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := channels.GetChannels()[channel]; !ok {
		t.Fatalf("channels = %v", channels)
	}
	info, err := a.Info(ctx)
	if err != nil || len(info.GetNodes()) == 0 || info.GetNodes()[0].GetNumClients() == 0 {
		t.Fatalf("info = %v, %v", info, err)
	}

	hist, err := a.History(ctx, &api.HistoryRequest{Channel: other, Limit: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(hist.GetPublications()) != 1 || hist.GetOffset() != 1 {
		t.Fatalf("history = %v", hist)
	}
	if _, err := a.HistoryRemove(ctx, &api.HistoryRemoveRequest{Channel: other}); err != nil {
		t.Fatal(err)
	}
	hist, err = a.History(ctx, &api.HistoryRequest{Channel: other, Limit: -1})
	if err != nil || len(hist.GetPublications()) != 0 || hist.GetOffset() != 1 {
		t.Fatalf("history after remove = %v, %v (want no publications, offset kept)", hist, err)
	}

	replies, err := a.Batch(ctx, &api.BatchRequest{Commands: []*api.Command{
		{Publish: &api.PublishRequest{Channel: other, Data: []byte(`{"n":2}`)}},
		{Publish: &api.PublishRequest{Channel: "nosuchnamespace:y", Data: []byte(`{}`)}},
		{PresenceStats: &api.PresenceStatsRequest{Channel: channel}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(replies) != 3 || replies[0].GetPublish().GetOffset() != 2 || replies[2].GetPresenceStats().GetNumClients() != 1 {
		t.Fatalf("batch replies = %v", replies)
	}
	if err := spinwire.ResponseError(replies[1]); !errors.As(err, &apiErr) || apiErr.Code != 102 {
		t.Fatalf("batch reply error = %v", err)
	}

	if _, err := a.Refresh(ctx, &api.RefreshRequest{User: user, ExpireAt: time.Now().Add(time.Hour).Unix()}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Unsubscribe(ctx, &api.UnsubscribeRequest{User: user, Channel: channel}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, unsubscribed, "server-side unsubscribe"); ev.Channel != channel {
		t.Fatalf("unsubscribed = %+v", ev)
	}
}
