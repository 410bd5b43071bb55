package spinwire

// Dialling shared by APIClient, Client and UniStream.

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// dial opens a lazily-connecting gRPC channel. Plaintext is the default (loopback and
// in-cluster deployments); a grpc.WithTransportCredentials among extra overrides it
// because later dial options win.
func dial(target string, extra []grpc.DialOption) (*grpc.ClientConn, error) {
	opts := make([]grpc.DialOption, 0, len(extra)+1)
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	opts = append(opts, extra...)
	return grpc.NewClient(target, opts...)
}
