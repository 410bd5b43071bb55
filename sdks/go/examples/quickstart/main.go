// Command quickstart publishes a message through the server API and receives it on a
// real-time subscription. Start a server first (see sdks/go/README.md), then:
//
//	go run ./examples/quickstart -stream 127.0.0.1:11000 -api 127.0.0.1:10000 \
//	    -api-key <grpc_api.key> -secret <client.token.hmac_secret_key>
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	spinwire "github.com/spinwire/spinwire/sdks/go"
	"github.com/spinwire/spinwire/sdks/go/gen/centrifugal/centrifugo/api"
)

func main() {
	streamAddr := flag.String("stream", "127.0.0.1:11000", "grpc_stream address")
	apiAddr := flag.String("api", "127.0.0.1:10000", "grpc_api address")
	apiKey := flag.String("api-key", "", "grpc_api.key")
	secret := flag.String("secret", "", "client.token.hmac_secret_key")
	channel := flag.String("channel", "chat:index", "channel to use (its namespace must allow client subscribe)")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Mint a connection token for user "alice", valid for an hour.
	token, err := spinwire.ConnectionToken(spinwire.HS256(*secret), "alice", spinwire.ConnectionClaims{TTL: time.Hour})
	if err != nil {
		log.Fatal(err)
	}

	// Real-time client: connect, subscribe, wait for one publication.
	client, err := spinwire.NewClient(*streamAddr, spinwire.Config{Token: token})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	client.OnConnected(func(e spinwire.ConnectedEvent) { fmt.Println("connected as client", e.ClientID) })
	client.OnDisconnected(func(e spinwire.DisconnectedEvent) { fmt.Println("disconnected:", e.Code, e.Reason) })

	sub, err := client.NewSubscription(*channel, spinwire.SubscriptionConfig{})
	if err != nil {
		log.Fatal(err)
	}
	received := make(chan spinwire.Publication, 1)
	sub.OnPublication(func(e spinwire.PublicationEvent) { received <- e.Publication })

	if err := client.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	if err := sub.Subscribe(ctx); err != nil {
		log.Fatal(err)
	}

	// Server API: publish into the channel.
	apiClient, err := spinwire.NewAPIClient(*apiAddr, spinwire.WithAPIKey(*apiKey))
	if err != nil {
		log.Fatal(err)
	}
	defer apiClient.Close()
	res, err := apiClient.Publish(ctx, &api.PublishRequest{Channel: *channel, Data: []byte(`{"text":"hello from Go"}`)})
	if err != nil {
		log.Fatal(err) // *spinwire.APIError carries the server's code, e.g. 102 unknown channel
	}
	fmt.Printf("published at offset %d (epoch %s)\n", res.GetOffset(), res.GetEpoch())

	select {
	case pub := <-received:
		fmt.Printf("received %s at offset %d\n", pub.Data, pub.Offset)
	case <-ctx.Done():
		log.Fatal("no publication received")
	}
}
