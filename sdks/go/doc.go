// Package spinwire is the Go SDK of Spinwire, a real-time messaging server that is
// wire-compatible with Centrifugo v6.
//
// It has four parts, all thin layers over the generated protobuf/gRPC code in gen/:
//
//   - APIClient: the server API (centrifugal.centrifugo.api.CentrifugoApi) over gRPC,
//     for publishing, presence, history, disconnecting users and so on.
//   - Client and Subscription: a real-time client over Spinwire's bidirectional gRPC
//     stream (spinwire.stream.v1.ClientStreamService), with reconnects, resubscribes
//     and recovery of missed publications.
//   - UniStream: a consumer of the unidirectional gRPC stream
//     (centrifugal.centrifugo.unistream.CentrifugoUniStream).
//   - ConnectionToken and SubscriptionToken: JWT minting (HS256, RS256, ES256) with the
//     standard library only.
package spinwire
