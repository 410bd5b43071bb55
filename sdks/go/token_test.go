package spinwire_test

// Integration tests of the token helpers: the server accepts what they mint.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	spinwire "github.com/spinwire/spinwire/sdks/go"
	"github.com/spinwire/spinwire/sdks/go/internal/testserver"
)

func TestTokensAcceptedByServer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		signer spinwire.Signer
	}{
		{"HS256", spinwire.HS256(testserver.HMACSecret)},
		{"RS256", spinwire.RS256(rsaKey)},
		{"ES256", spinwire.ES256(ecdsaKey)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			user := unique("tok-" + tc.name)
			token, err := spinwire.ConnectionToken(tc.signer, user, spinwire.ConnectionClaims{TTL: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			client := newClient(t, spinwire.Config{Token: token})
			if err := client.Connect(ctx); err != nil {
				t.Fatalf("connect with %s token: %v", tc.name, err)
			}
			// The user id comes from the token.
			channel := unique("chat:tok")
			sub, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{})
			if err != nil {
				t.Fatal(err)
			}
			if err := sub.Subscribe(ctx); err != nil {
				t.Fatal(err)
			}
			presence, err := sub.Presence(ctx)
			if err != nil || presence[client.ClientID()].User != user {
				t.Fatalf("presence = %+v, %v; want user %s", presence, err, user)
			}
		})
	}
}

func TestExpiredTokenFailsConnectWith109(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	token := hsToken(t, unique("expired"), spinwire.ConnectionClaims{ExpiresAt: time.Now().Add(-time.Minute)})
	client := newClient(t, spinwire.Config{Token: token})
	disconnected, onDisconnected := events[spinwire.DisconnectedEvent]()
	client.OnDisconnected(onDisconnected)
	err := client.Connect(ctx)
	var re *spinwire.ReplyError
	if !errors.As(err, &re) || re.Code != 109 {
		t.Fatalf("connect with expired token: %v, want error 109", err)
	}
	if ev := next(t, disconnected, "disconnected"); ev.Code != 109 {
		t.Fatalf("disconnected = %+v", ev)
	}

	// With GetToken the client fetches a fresh token after 109 and connects.
	user := unique("refreshed")
	var calls atomic.Int32
	client2 := newClient(t, spinwire.Config{
		Token: token,
		GetToken: func(context.Context) (string, error) {
			calls.Add(1)
			return hsToken(t, user, spinwire.ConnectionClaims{TTL: time.Hour}), nil
		},
		MinReconnectDelay: 10 * time.Millisecond,
	})
	if err := client2.Connect(ctx); err != nil {
		t.Fatalf("connect with GetToken after 109: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("GetToken called %d times, want 1", n)
	}
}

func TestTokenWithUnconfiguredKeyIsRejected(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	token, err := spinwire.ConnectionToken(spinwire.ES256(otherKey), unique("forged"), spinwire.ConnectionClaims{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	client := newClient(t, spinwire.Config{Token: token})
	err = client.Connect(ctx)
	var de *spinwire.DisconnectError
	if !errors.As(err, &de) || de.Code != 3500 {
		t.Fatalf("connect with a token signed by an unknown key: %v, want disconnect 3500", err)
	}
}

func TestSubscriptionTokenForPrivateChannel(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	user := unique("private-user")
	client := newClient(t, spinwire.Config{Token: hsToken(t, user, spinwire.ConnectionClaims{TTL: time.Hour})})
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}

	denied, err := client.NewSubscription(unique("$chat:denied"), spinwire.SubscriptionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var re *spinwire.ReplyError
	if err := denied.Subscribe(ctx); !errors.As(err, &re) || re.Code != 103 {
		t.Fatalf("private channel without token: %v, want 103", err)
	}

	channel := unique("$chat:private")
	sub, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{
		GetToken: func(_ context.Context, ch string) (string, error) {
			return spinwire.SubscriptionToken(spinwire.RS256(rsaKey), user, ch, spinwire.SubscriptionClaims{TTL: time.Hour, Info: map[string]int{"seat": 7}})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pubs, onPub := events[spinwire.PublicationEvent]()
	sub.OnPublication(onPub)
	if err := sub.Subscribe(ctx); err != nil {
		t.Fatalf("private channel with token: %v", err)
	}
	if err := sub.Publish(ctx, []byte(`{"p":1}`)); err != nil {
		t.Fatal(err)
	}
	if p := next(t, pubs, "publication"); p.Info == nil || string(p.Info.ChanInfo) != `{"seat":7}` {
		t.Fatalf("publication info = %+v, want chan info from the token", p.Info)
	}
}

// Short-lived connection and subscription tokens are refreshed through GetToken before
// the server closes the connection (3005) or the subscription (2501).
func TestTokensRefreshedBeforeExpiry(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	user := unique("refresh-user")
	channel := unique("$chat:refresh")
	const ttl = 2 * time.Second
	var connCalls, subCalls atomic.Int32
	client := newClient(t, spinwire.Config{
		GetToken: func(context.Context) (string, error) {
			connCalls.Add(1)
			return hsToken(t, user, spinwire.ConnectionClaims{TTL: ttl}), nil
		},
	})
	connecting, onConnecting := events[spinwire.ConnectingEvent]()
	client.OnConnecting(onConnecting)
	sub, err := client.NewSubscription(channel, spinwire.SubscriptionConfig{
		GetToken: func(_ context.Context, ch string) (string, error) {
			subCalls.Add(1)
			return spinwire.SubscriptionToken(spinwire.HS256(testserver.HMACSecret), user, ch, spinwire.SubscriptionClaims{TTL: ttl})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	subscribing, onSubscribing := events[spinwire.SubscribingEvent]()
	sub.OnSubscribing(onSubscribing)
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	next(t, connecting, "connecting")
	if err := sub.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}
	next(t, subscribing, "subscribing")

	// Without refreshes the server would act 1 s after expiry, i.e. within 3 s.
	none(t, connecting, 2*ttl+time.Second, "reconnect (connection token not refreshed?)")
	none(t, subscribing, 0, "resubscribe (subscription token not refreshed?)")
	if n := connCalls.Load(); n < 3 {
		t.Fatalf("connection GetToken called %d times, want the initial call and refreshes", n)
	}
	if n := subCalls.Load(); n < 3 {
		t.Fatalf("subscription GetToken called %d times, want the initial call and refreshes", n)
	}
	if client.State() != spinwire.StateConnected || sub.State() != spinwire.SubStateSubscribed {
		t.Fatalf("client %v, subscription %v", client.State(), sub.State())
	}
}
