package spinwire_test

// Shared fixtures for the integration tests: one real server per test binary (started
// in TestMain, with HS256, RS256 and ES256 keys configured and a short ping interval so
// ping/pong is exercised), plus helpers to await events without sleeping.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	spinwire "github.com/spinwire/spinwire/sdks/go"
	"github.com/spinwire/spinwire/sdks/go/internal/testserver"
)

var (
	srv      *testserver.Server
	rsaKey   *rsa.PrivateKey
	ecdsaKey *ecdsa.PrivateKey
	uniqueN  atomic.Int64
)

// Server pings every 2 s and expects the pong within 1 s, so a client that does not
// answer pings is disconnected (3012) within any test that lasts a few seconds.
const pingInterval = 2 * time.Second

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if ecdsaKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv, err = testserver.Start(func(cfg map[string]any) {
		client := cfg["client"].(map[string]any)
		token := client["token"].(map[string]any)
		token["rsa_public_key"] = publicPEM(&rsaKey.PublicKey)
		token["ecdsa_public_key"] = publicPEM(&ecdsaKey.PublicKey)
		client["ping_interval"] = pingInterval.String()
		client["pong_timeout"] = "1s"
		// Expired connections/subscriptions are closed 1 s after their token expires,
		// so a client that does not refresh tokens fails within a short test.
		client["expired_close_delay"] = "1s"
		client["expired_sub_close_delay"] = "1s"
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: cannot start the spinwire server: %v\n", err)
		return 1
	}
	code := m.Run()
	if err := srv.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	return code
}

func publicPEM(pub any) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// unique returns a name no other test uses, so tests can share the server.
func unique(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, uniqueN.Add(1))
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newAPI(t *testing.T) *spinwire.APIClient {
	t.Helper()
	c, err := spinwire.NewAPIClient(srv.APIAddr, spinwire.WithAPIKey(testserver.APIKey))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func hsToken(t *testing.T, user string, claims spinwire.ConnectionClaims) string {
	t.Helper()
	token, err := spinwire.ConnectionToken(spinwire.HS256(testserver.HMACSecret), user, claims)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// newClient creates a client that is closed when the test ends.
func newClient(t *testing.T, cfg spinwire.Config) *spinwire.Client {
	t.Helper()
	c, err := spinwire.NewClient(srv.StreamAddr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// events returns a channel fed by a handler; large enough that handlers never block.
func events[E any]() (chan E, func(E)) {
	ch := make(chan E, 256)
	return ch, func(e E) { ch <- e }
}

// next waits for the next event on ch.
func next[E any](t *testing.T, ch <-chan E, what string) E {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// none asserts that nothing arrives on ch for d (used only for "must not happen").
func none[E any](t *testing.T, ch <-chan E, d time.Duration, what string) {
	t.Helper()
	select {
	case e := <-ch: // something already there wins over an expired wait
		t.Fatalf("unexpected %s: %+v", what, e)
	default:
	}
	select {
	case e := <-ch:
		t.Fatalf("unexpected %s: %+v", what, e)
	case <-time.After(d):
	}
}

func serverLogTail() string {
	log := srv.Log()
	lines := strings.Split(log, "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}
