package spinwire

// Offline tests of the pieces that need no server: JWT signatures verified with the
// standard library's verifiers, the backoff bounds, and the event queue's policy.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"
)

// decodeJWT splits a token and checks its alg; returns claims, signing input, signature.
func decodeJWT(t *testing.T, token, alg string) (map[string]any, []byte, []byte) {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	enc := base64.RawURLEncoding
	var header map[string]string
	var claims map[string]any
	for i, dst := range []any{&header, &claims} {
		raw, err := enc.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("part %d not base64url without padding: %v", i, err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			t.Fatal(err)
		}
	}
	if header["alg"] != alg || header["typ"] != "JWT" {
		t.Fatalf("header = %v", header)
	}
	sig, err := enc.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	return claims, []byte(parts[0] + "." + parts[1]), sig
}

func TestConnectionTokenHS256Claims(t *testing.T) {
	yes := true
	token, err := ConnectionToken(HS256("secret"), "alice", ConnectionClaims{
		TTL:      time.Hour,
		Info:     map[string]string{"name": "Alice"},
		Channels: []string{"news"},
		Subs:     map[string]ServerSubscription{"chat:a": {Data: json.RawMessage(`{"x":1}`), Override: &SubscribeOverride{Presence: &yes}}},
		Meta:     json.RawMessage(`{"plan":"pro"}`),
		Extra:    map[string]any{"expire_at": 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	claims, input, sig := decodeJWT(t, token, "HS256")
	mac := hmac.New(sha256.New, []byte("secret"))
	mac.Write(input)
	if !hmac.Equal(sig, mac.Sum(nil)) {
		t.Fatal("HS256 signature does not verify")
	}
	exp := int64(claims["exp"].(float64))
	if d := time.Until(time.Unix(exp, 0)); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("exp %v from now, want about 1h", d)
	}
	got, _ := json.Marshal(map[string]any{"sub": claims["sub"], "info": claims["info"], "channels": claims["channels"], "subs": claims["subs"], "meta": claims["meta"], "expire_at": claims["expire_at"]})
	want := `{"channels":["news"],"expire_at":0,"info":{"name":"Alice"},"meta":{"plan":"pro"},"sub":"alice","subs":{"chat:a":{"data":{"x":1},"override":{"presence":{"value":true}}}}}`
	if string(got) != want {
		t.Fatalf("claims\n got %s\nwant %s", got, want)
	}
	if _, ok := claims["channel"]; ok {
		t.Fatal("a connection token must not carry a channel claim")
	}
}

func TestSubscriptionTokenRS256(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	token, err := SubscriptionToken(RS256(key), "bob", "$chat:x", SubscriptionClaims{ExpiresAt: time.Unix(2000000000, 0), Client: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	claims, input, sig := decodeJWT(t, token, "RS256")
	digest := sha256.Sum256(input)
	if err := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
		t.Fatalf("RS256 signature does not verify: %v", err)
	}
	if claims["sub"] != "bob" || claims["channel"] != "$chat:x" || claims["client"] != "c1" || claims["exp"].(float64) != 2000000000 {
		t.Fatalf("claims = %v", claims)
	}
	if _, err := SubscriptionToken(RS256(key), "bob", "", SubscriptionClaims{}); err == nil {
		t.Fatal("subscription token without channel accepted")
	}
}

func TestES256SignatureIsRawRS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	token, err := ConnectionToken(ES256(key), "carol", ConnectionClaims{})
	if err != nil {
		t.Fatal(err)
	}
	claims, input, sig := decodeJWT(t, token, "ES256")
	if len(sig) != 64 {
		t.Fatalf("ES256 signature is %d bytes, want 64 (r||s)", len(sig))
	}
	digest := sha256.Sum256(input)
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(&key.PublicKey, digest[:], r, s) {
		t.Fatal("ES256 signature does not verify")
	}
	if _, ok := claims["exp"]; ok {
		t.Fatal("no ExpiresAt/TTL must mean no exp claim")
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := ConnectionToken(ES256(p384), "carol", ConnectionClaims{}); err == nil {
		t.Fatal("ES256 with a P-384 key accepted")
	}
}

func TestBackoffBoundsAndReset(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second}
	for attempt := range 50 {
		d := b.next()
		limit := b.min << attempt
		if attempt > 10 || limit > b.max {
			limit = b.max
		}
		if d < b.min || d > limit {
			t.Fatalf("attempt %d: delay %v outside [%v, %v]", attempt, d, b.min, limit)
		}
	}
	b.reset()
	if d := b.next(); d != b.min {
		t.Fatalf("after reset: %v, want %v", d, b.min)
	}
}

func TestShouldReconnect(t *testing.T) {
	for code, want := range map[uint32]bool{
		CodeTransportClosed: true, 3000: true, 3012: true, 3499: true, 3500: false, 3999: false,
		4000: true, 4001: true, 4499: true, 4500: false, 4501: false, 4999: false, 5000: true,
	} {
		if got := ShouldReconnect(code); got != want {
			t.Errorf("ShouldReconnect(%d) = %v, want %v", code, got, want)
		}
	}
}

func TestEventQueueOrderLimitAndRoom(t *testing.T) {
	q := newEventQueue(4)
	defer q.close()
	gate := make(chan struct{})
	seen := make(chan int, 16)
	q.push(func() { <-gate }) // keeps the dispatcher busy
	deadline := time.Now().Add(5 * time.Second)
	for {
		q.mu.Lock()
		n := len(q.items)
		q.mu.Unlock()
		if n == 0 {
			break // the blocker was taken
		}
		if time.Now().After(deadline) {
			t.Fatal("dispatcher did not start")
		}
		time.Sleep(time.Millisecond)
	}
	for i := range 4 {
		if !q.push(func() { seen <- i }) {
			t.Fatalf("push %d refused below the limit", i)
		}
	}
	if q.push(func() { seen <- 99 }) {
		t.Fatal("data event accepted beyond the limit")
	}
	if !q.pushState(func() { seen <- 4 }) {
		t.Fatal("state event refused")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := q.waitRoom(ctx); err == nil {
		t.Fatal("waitRoom returned while the queue is full")
	}
	close(gate)
	if err := q.waitRoom(context.Background()); err != nil {
		t.Fatal(err)
	}
	for want := range 5 {
		select {
		case got := <-seen:
			if got != want {
				t.Fatalf("event %d ran as #%d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("events not delivered")
		}
	}
}
