package spinwire_test

// Integration tests of the real-time client and the uni-stream consumer against the
// real server.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	spinwire "github.com/spinwire/spinwire/sdks/go"
	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifuge/protocol"
	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifugo/api"
	"github.com/spinwire/spinwire/sdks/go/internal/testserver"
)

func TestAPIPublishReachesBidiAndUniSubscribers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	channel := unique("chat:fanout")
	apiClient := newAPI(t)

	client := newClient(t, spinwire.Config{Token: hsToken(t, unique("bidi"), spinwire.ConnectionClaims{TTL: time.Hour})})
	sub, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pubs, onPub := events[spinwire.PublicationEvent]()
	sub.OnPublication(onPub)
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sub.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}

	uniToken := hsToken(t, unique("uni"), spinwire.ConnectionClaims{TTL: time.Hour, Channels: []string{channel}})
	uni, err := spinwire.ConsumeUniStream(ctx, srv.StreamAddr, &protocol.ConnectRequest{Token: uniToken})
	if err != nil {
		t.Fatal(err)
	}
	defer uni.Close()
	first, err := uni.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetConnect() == nil {
		t.Fatalf("first uni push is not connect: %v", first)
	}
	if _, ok := first.GetConnect().GetSubs()[channel]; !ok {
		t.Fatalf("connect push subs %v lack %s", first.GetConnect().GetSubs(), channel)
	}

	res, err := apiClient.Publish(ctx, &api.PublishRequest{Channel: channel, Data: []byte(`{"text":"hello"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetOffset() != 1 || res.GetEpoch() == "" {
		t.Fatalf("publish result %v: want offset 1 and an epoch", res)
	}

	got := next(t, pubs, "bidi publication")
	if string(got.Data) != `{"text":"hello"}` || got.Offset != 1 {
		t.Fatalf("bidi publication = %+v", got)
	}
	push, err := uni.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if push.GetChannel() != channel || string(push.GetPub().GetData()) != `{"text":"hello"}` || push.GetPub().GetOffset() != 1 {
		t.Fatalf("uni push = %v", push)
	}
}

func TestReconnectCodeRecoversMissedPublications(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	user := unique("recover-user")
	channel := unique("chat:recover")
	serverChannel := unique("chat:server-recover")
	apiClient := newAPI(t)

	// A long enough reconnect delay that the test can publish while the client is away.
	client := newClient(t, spinwire.Config{
		Token:             hsToken(t, user, spinwire.ConnectionClaims{TTL: time.Hour, Channels: []string{serverChannel}}),
		MinReconnectDelay: 1500 * time.Millisecond,
		MaxReconnectDelay: 1500 * time.Millisecond,
	})
	connecting, onConnecting := events[spinwire.ConnectingEvent]()
	connected, onConnected := events[spinwire.ConnectedEvent]()
	client.OnConnecting(onConnecting)
	client.OnConnected(onConnected)
	serverSubscribed, onServerSubscribed := events[spinwire.ServerSubscribedEvent]()
	serverPubs, onServerPub := events[spinwire.ServerPublicationEvent]()
	client.OnServerSubscribed(onServerSubscribed)
	client.OnServerPublication(onServerPub)

	sub, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// One ordered log of subscribed events and publications, as handlers saw them.
	type entry struct {
		subscribed *spinwire.SubscribedEvent
		offset     uint64
		data       string
	}
	log, onEntry := events[entry]()
	sub.OnSubscribed(func(e spinwire.SubscribedEvent) { onEntry(entry{subscribed: &e}) })
	sub.OnPublication(func(e spinwire.PublicationEvent) { onEntry(entry{offset: e.Offset, data: string(e.Data)}) })

	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	next(t, connecting, "initial connecting")
	next(t, connected, "connected")
	if ev := next(t, serverSubscribed, "server-side subscribed"); ev.Channel != serverChannel || !ev.Recoverable {
		t.Fatalf("server subscribed = %+v", ev)
	}
	if err := sub.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}
	if e := next(t, log, "subscribed"); e.subscribed == nil || e.subscribed.WasRecovering || !e.subscribed.Recoverable {
		t.Fatalf("first entry = %+v", e)
	}
	publish := func(ch string, i int) {
		t.Helper()
		if _, err := apiClient.Publish(ctx, &api.PublishRequest{Channel: ch, Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 2; i++ {
		publish(channel, i)
		publish(serverChannel, i)
	}
	for i := 1; i <= 2; i++ {
		if e := next(t, log, "live publication"); e.offset != uint64(i) {
			t.Fatalf("live publication %d = %+v", i, e)
		}
		if e := next(t, serverPubs, "live server publication"); e.Offset != uint64(i) || e.Channel != serverChannel {
			t.Fatalf("live server publication %d = %+v", i, e)
		}
	}

	if _, err := apiClient.Disconnect(ctx, &api.DisconnectRequest{User: user, Disconnect: &api.Disconnect{Code: 4001, Reason: "test reconnect"}}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, connecting, "connecting after 4001"); ev.Code != 4001 || ev.Reason != "test reconnect" {
		t.Fatalf("connecting event = %+v", ev)
	}
	for i := 3; i <= 5; i++ { // missed while away
		publish(channel, i)
		publish(serverChannel, i)
	}
	next(t, connected, "reconnected")

	e := next(t, log, "resubscribed")
	if e.subscribed == nil || !e.subscribed.WasRecovering || !e.subscribed.Recovered {
		t.Fatalf("after reconnect: want subscribed with recovered=true, got %+v", e)
	}
	for i := 3; i <= 5; i++ {
		e := next(t, log, "recovered publication")
		if e.subscribed != nil || e.offset != uint64(i) || e.data != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("recovered publication %d = %+v", i, e)
		}
	}
	ss := next(t, serverSubscribed, "server-side resubscribed")
	if !ss.WasRecovering || !ss.Recovered {
		t.Fatalf("server-side subscription after reconnect = %+v", ss)
	}
	for i := 3; i <= 5; i++ {
		if e := next(t, serverPubs, "recovered server publication"); e.Offset != uint64(i) {
			t.Fatalf("recovered server publication %d = %+v", i, e)
		}
	}
	// Exactly the missed ones: a fresh publication comes next, nothing in between.
	publish(channel, 6)
	if e := next(t, log, "publication after recovery"); e.offset != 6 {
		t.Fatalf("after recovery got %+v, want offset 6 (duplicate or gap)", e)
	}
}

func TestTerminalDisconnectCodeStopsClient(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	user := unique("terminal-user")
	apiClient := newAPI(t)
	client := newClient(t, spinwire.Config{
		Token:             hsToken(t, user, spinwire.ConnectionClaims{TTL: time.Hour}),
		MinReconnectDelay: 50 * time.Millisecond,
		MaxReconnectDelay: 100 * time.Millisecond,
	})
	disconnected, onDisconnected := events[spinwire.DisconnectedEvent]()
	connected, onConnected := events[spinwire.ConnectedEvent]()
	client.OnDisconnected(onDisconnected)
	client.OnConnected(onConnected)
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	next(t, connected, "connected")

	if _, err := apiClient.Disconnect(ctx, &api.DisconnectRequest{User: user, Disconnect: &api.Disconnect{Code: 4501, Reason: "banned"}}); err != nil {
		t.Fatal(err)
	}
	ev := next(t, disconnected, "disconnected")
	if ev.Code != 4501 || ev.Reason != "banned" {
		t.Fatalf("disconnected event = %+v", ev)
	}
	if st := client.State(); st != spinwire.StateDisconnected {
		t.Fatalf("state = %v, want disconnected", st)
	}
	err := client.Publish(ctx, unique("chat:x"), []byte(`{}`))
	var de *spinwire.DisconnectError
	if !errors.Is(err, spinwire.ErrClientDisconnected) || !errors.As(err, &de) || de.Code != 4501 {
		t.Fatalf("publish on stopped client should report 4501, got %v", err)
	}
	// Many reconnect delays later it is still stopped.
	none(t, connected, time.Second, "reconnect after terminal code")
}

func TestClientPingPongPublishPresenceHistory(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	user := unique("pp-user")
	channel := unique("chat:pp")
	client := newClient(t, spinwire.Config{Token: hsToken(t, user, spinwire.ConnectionClaims{TTL: time.Hour, Info: map[string]string{"name": "Ann"}})})
	connecting, onConnecting := events[spinwire.ConnectingEvent]()
	client.OnConnecting(onConnecting)
	sub, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{JoinLeave: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{}); !errors.Is(err, spinwire.ErrDuplicateSubscription) {
		t.Fatalf("duplicate subscription: %v", err)
	}
	pubs, onPub := events[spinwire.PublicationEvent]()
	sub.OnPublication(onPub)
	joins, onJoin := events[spinwire.JoinEvent]()
	sub.OnJoin(onJoin)
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	next(t, connecting, "connecting")
	if err := sub.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}
	if j := next(t, joins, "own join"); j.User != user || j.Client != client.ClientID() {
		t.Fatalf("join = %+v", j)
	}

	if err := sub.Publish(ctx, []byte(`{"msg":1}`)); err != nil {
		t.Fatal(err)
	}
	p := next(t, pubs, "own publication")
	if string(p.Data) != `{"msg":1}` || p.Info == nil || p.Info.User != user || string(p.Info.ConnInfo) != `{"name":"Ann"}` {
		t.Fatalf("publication = %+v (info %+v)", p, p.Info)
	}
	presence, err := sub.Presence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info, ok := presence[client.ClientID()]; !ok || info.User != user {
		t.Fatalf("presence %+v lacks own client %s", presence, client.ClientID())
	}
	stats, err := sub.PresenceStats(ctx)
	if err != nil || stats.NumClients != 1 || stats.NumUsers != 1 {
		t.Fatalf("presence stats = %+v, %v", stats, err)
	}
	hist, err := sub.History(ctx, spinwire.HistoryOptions{Limit: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(hist.Publications) != 1 || hist.Offset != 1 || hist.Epoch == "" || string(hist.Publications[0].Data) != `{"msg":1}` {
		t.Fatalf("history = %+v", hist)
	}

	// Permission errors carry the code: "nope" is not a configured namespace.
	bad, err := client.NewSubscription("nope:"+channel, spinwire.SubscriptionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var re *spinwire.ReplyError
	if err := bad.Subscribe(ctx); !errors.As(err, &re) || re.Code != 102 {
		t.Fatalf("subscribe to unknown namespace: %v", err)
	}

	// A uni-stream consumer of the same channel lives through the same pings.
	uniToken := hsToken(t, unique("pp-uni"), spinwire.ConnectionClaims{TTL: time.Hour, Channels: []string{channel}})
	uni, err := spinwire.ConsumeUniStream(ctx, srv.StreamAddr, &protocol.ConnectRequest{Token: uniToken})
	if err != nil {
		t.Fatal(err)
	}
	defer uni.Close()
	if p, err := uni.Recv(); err != nil || p.GetConnect() == nil {
		t.Fatalf("uni connect push = %v, %v", p, err)
	}

	// The server pings every 2 s and gives 1 s for the pong: over several pings the
	// client must stay connected.
	none(t, connecting, 3*pingInterval, "reconnect (pong not answered?)")
	if client.State() != spinwire.StateConnected {
		t.Fatalf("state = %v", client.State())
	}
	// The uni stream got pings meanwhile; Recv skips them and yields publications only.
	if err := sub.Publish(ctx, []byte(`{"msg":2}`)); err != nil {
		t.Fatal(err)
	}
	if p, err := uni.Recv(); err != nil || string(p.GetPub().GetData()) != `{"msg":2}` {
		t.Fatalf("uni push = %v, %v; want the publication", p, err)
	}

	if err := sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := newAPI(t).Presence(ctx, &api.PresenceRequest{Channel: channel})
	if _, still := after.GetPresence()[client.ClientID()]; err != nil || still {
		t.Fatalf("presence after unsubscribe = %v, %v", after, err)
	}
}

func TestUniStreamEndsWithDisconnectCode(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	user := unique("uni-user")
	channel := unique("chat:uni")
	apiClient := newAPI(t)
	token := hsToken(t, user, spinwire.ConnectionClaims{TTL: time.Hour, Channels: []string{channel}})
	uni, err := spinwire.ConsumeUniStream(ctx, srv.StreamAddr, &protocol.ConnectRequest{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer uni.Close()
	first, err := uni.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetConnect() == nil || first.GetConnect().GetClient() == "" {
		t.Fatalf("first push = %v, want connect with a client id", first)
	}
	if _, err := apiClient.Publish(ctx, &api.PublishRequest{Channel: channel, Data: []byte(`"one"`)}); err != nil {
		t.Fatal(err)
	}
	push, err := uni.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if push.GetChannel() != channel || string(push.GetPub().GetData()) != `"one"` {
		t.Fatalf("push = %v", push)
	}
	if _, err := apiClient.Disconnect(ctx, &api.DisconnectRequest{User: user, Disconnect: &api.Disconnect{Code: 4002, Reason: "go away"}}); err != nil {
		t.Fatal(err)
	}
	_, err = uni.Recv()
	var de *spinwire.DisconnectError
	if !errors.As(err, &de) || de.Code != 4002 || de.Reason != "go away" {
		t.Fatalf("end of uni stream: %v, want disconnect 4002", err)
	}
	if uni.Disconnect() == nil || uni.Disconnect().Code != 4002 {
		t.Fatalf("Disconnect() = %v", uni.Disconnect())
	}
	if _, again := uni.Recv(); !errors.As(again, &de) {
		t.Fatalf("Recv after end = %v", again)
	}
}

// Handlers that fall behind overflow the bounded event queue; the client reconnects and
// recovers, so a recoverable subscription still sees every publication exactly once.
func TestEventQueueOverflowRecovers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	channel := unique("chat:overflow")
	client := newClient(t, spinwire.Config{
		Token:             hsToken(t, unique("slow-user"), spinwire.ConnectionClaims{TTL: time.Hour}),
		EventQueueSize:    4,
		MinReconnectDelay: 10 * time.Millisecond,
	})
	errs, onError := events[spinwire.ErrorEvent]()
	client.OnError(onError)
	sub, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	offsets, onOffset := events[uint64]()
	sub.OnPublication(func(e spinwire.PublicationEvent) {
		if e.Offset == 1 {
			<-release // a stuck handler
		}
		onOffset(e.Offset)
	})
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sub.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}
	apiClient := newAPI(t)
	const total = 20
	for i := 1; i <= total; i++ {
		if _, err := apiClient.Publish(ctx, &api.PublishRequest{Channel: channel, Data: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	// Events wait behind the stuck handler, but the state is visible at once.
	deadline := time.Now().Add(10 * time.Second)
	for client.State() != spinwire.StateConnecting {
		if time.Now().After(deadline) {
			t.Fatalf("state = %v, want connecting after the queue overflowed", client.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	for i := uint64(1); i <= total; i++ {
		if got := next(t, offsets, "publication"); got != i {
			t.Fatalf("publication offset %d, want %d", got, i)
		}
	}
	if e := next(t, errs, "overflow error"); e.Err == nil || !strings.Contains(e.Err.Error(), "overflow") {
		t.Fatalf("error event = %v", e.Err)
	}
	none(t, offsets, 200*time.Millisecond, "duplicate publication")
}

// Rapid subscribe/unsubscribe leaves the server in the state the last call asked for.
func TestSubscribeUnsubscribeChurn(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	channel := unique("chat:churn")
	apiClient := newAPI(t)
	user := unique("churn-user")
	client := newClient(t, spinwire.Config{Token: hsToken(t, user, spinwire.ConnectionClaims{TTL: time.Hour})})
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	tokenRequested, releaseToken := make(chan struct{}, 1), make(chan struct{})
	sub, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{
		GetToken: func(_ context.Context, ch string) (string, error) {
			tokenRequested <- struct{}{}
			<-releaseToken
			return spinwire.SubscriptionToken(spinwire.HS256(testserver.HMACSecret), user, ch, spinwire.SubscriptionClaims{})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pubs, onPub := events[spinwire.PublicationEvent]()
	sub.OnPublication(onPub)
	inPresence := func() bool {
		t.Helper()
		res, err := apiClient.Presence(ctx, &api.PresenceRequest{Channel: channel})
		if err != nil {
			t.Fatal(err)
		}
		_, ok := res.GetPresence()[client.ClientID()]
		return ok
	}
	// Subscribe with a cancelled context records the intent and returns at once.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	barrier := func() {
		t.Helper()
		// Commands are handled in order: a reply to this one comes after every earlier one.
		if err := client.Publish(ctx, unique("chat:churn-barrier"), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}

	// Unsubscribe while the subscription token is being fetched: the subscribe that
	// was being prepared must never reach the server.
	if err := sub.Subscribe(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	next(t, tokenRequested, "subscription token request")
	if err := sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	close(releaseToken)
	barrier()
	if inPresence() || sub.State() != spinwire.SubStateUnsubscribed {
		t.Fatalf("abandoned subscribe reached the server (state %v)", sub.State())
	}

	// Then churn: Unsubscribe races with the subscribe commands the client sends.
	for i := range 40 {
		if err := sub.Subscribe(cancelled); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		if i%2 == 1 { // sometimes let the subscribe complete first
			if err := sub.Subscribe(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := sub.Unsubscribe(ctx); err != nil {
			t.Fatal(err)
		}
	}
	barrier()
	if inPresence() {
		t.Fatal("server still has the subscription after the final Unsubscribe")
	}
	if err := sub.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}
	if !inPresence() {
		t.Fatal("server lacks the subscription after Subscribe")
	}
	if _, err := apiClient.Publish(ctx, &api.PublishRequest{Channel: channel, Data: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if p := next(t, pubs, "publication"); p.Offset != 1 {
		t.Fatalf("publication = %+v", p)
	}
	none(t, pubs, 100*time.Millisecond, "duplicate publication")
}
