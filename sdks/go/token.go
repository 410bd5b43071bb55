package spinwire

// JWT minting for connection and subscription tokens (§5 of the protocol), standard
// library only. A token is header.payload.signature, each part base64url without padding.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Signer signs JWTs with one algorithm. HS256, RS256 and ES256 return the built-in ones.
type Signer interface {
	// Algorithm is the JWT "alg" header value, e.g. "HS256".
	Algorithm() string
	// Sign returns the JWS signature of signingInput ("<header>.<payload>").
	Sign(signingInput []byte) ([]byte, error)
}

type hs256Signer []byte

// HS256 signs with HMAC-SHA256 and the server's client.token.hmac_secret_key.
func HS256(secret string) Signer { return hs256Signer(secret) }

func (hs256Signer) Algorithm() string { return "HS256" }

func (s hs256Signer) Sign(input []byte) ([]byte, error) {
	if len(s) == 0 {
		return nil, errors.New("spinwire: empty HMAC secret")
	}
	mac := hmac.New(sha256.New, s)
	mac.Write(input)
	return mac.Sum(nil), nil
}

type rs256Signer struct{ key *rsa.PrivateKey }

// RS256 signs with RSASSA-PKCS1-v1_5 SHA-256; the server verifies with
// client.token.rsa_public_key.
func RS256(key *rsa.PrivateKey) Signer { return rs256Signer{key} }

func (rs256Signer) Algorithm() string { return "RS256" }

func (s rs256Signer) Sign(input []byte) ([]byte, error) {
	if s.key == nil {
		return nil, errors.New("spinwire: nil RSA key")
	}
	digest := sha256.Sum256(input)
	return rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, digest[:])
}

type es256Signer struct{ key *ecdsa.PrivateKey }

// ES256 signs with ECDSA P-256 SHA-256; the server verifies with
// client.token.ecdsa_public_key.
func ES256(key *ecdsa.PrivateKey) Signer { return es256Signer{key} }

func (es256Signer) Algorithm() string { return "ES256" }

// Sign returns the JWS form of the signature: r and s as fixed 32-byte big-endian
// integers, concatenated (not the ASN.1 form crypto/ecdsa uses elsewhere).
func (s es256Signer) Sign(input []byte) ([]byte, error) {
	if s.key == nil || s.key.Curve != elliptic.P256() {
		return nil, errors.New("spinwire: ES256 needs a P-256 private key")
	}
	digest := sha256.Sum256(input)
	r, sv, err := ecdsa.Sign(rand.Reader, s.key, digest[:])
	if err != nil {
		return nil, err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	sv.FillBytes(sig[32:])
	return sig, nil
}

// SubscribeOverride overrides namespace options for a subscription created from a token.
// A nil field leaves the namespace default.
type SubscribeOverride struct {
	Presence           *bool
	JoinLeave          *bool
	ForcePushJoinLeave *bool
	ForcePositioning   *bool
	ForceRecovery      *bool
}

func (o *SubscribeOverride) claim() map[string]any {
	if o == nil {
		return nil
	}
	m := map[string]any{}
	set := func(name string, v *bool) {
		if v != nil {
			m[name] = map[string]bool{"value": *v}
		}
	}
	set("presence", o.Presence)
	set("join_leave", o.JoinLeave)
	set("force_push_join_leave", o.ForcePushJoinLeave)
	set("force_positioning", o.ForcePositioning)
	set("force_recovery", o.ForceRecovery)
	return m
}

// ServerSubscription describes one entry of a connection token's "subs" claim: a
// server-side subscription with per-channel options.
type ServerSubscription struct {
	// Info becomes the channel info (ClientInfo.ChanInfo); marshalled with encoding/json.
	Info any
	// Data is returned to the client in the subscribe result.
	Data     any
	Override *SubscribeOverride
}

// ConnectionClaims are the claims of a connection token besides "sub" (the user).
// Values typed any are marshalled with encoding/json; pass json.RawMessage for raw JSON.
type ConnectionClaims struct {
	// ExpiresAt sets "exp". When zero, TTL (if positive) sets it relative to now; with
	// both zero the token never expires.
	ExpiresAt time.Time
	TTL       time.Duration
	// Info is the connection info seen in presence, join/leave and publications.
	Info any
	// Channels are server-side subscriptions with namespace defaults (used when Subs is
	// empty).
	Channels []string
	// Subs are server-side subscriptions with per-channel options.
	Subs map[string]ServerSubscription
	// Meta is hidden connection metadata (only sent to proxies).
	Meta     any
	Audience string
	Issuer   string
	// Extra claims are added last and win over everything above, e.g.
	// {"expire_at": 0}.
	Extra map[string]any
}

// SubscriptionClaims are the claims of a subscription token besides "sub" and
// "channel".
type SubscriptionClaims struct {
	ExpiresAt time.Time
	TTL       time.Duration
	// Info becomes the channel info (ClientInfo.ChanInfo).
	Info any
	// Data is returned in the subscribe result.
	Data any
	// Client, if set, binds the token to one client id.
	Client   string
	Override *SubscribeOverride
	Audience string
	Issuer   string
	Extra    map[string]any
}

// ConnectionToken mints a connection JWT for user ("" = anonymous).
func ConnectionToken(s Signer, user string, c ConnectionClaims) (string, error) {
	now := time.Now()
	claims := map[string]any{"sub": user, "iat": now.Unix()}
	setExpiry(claims, now, c.ExpiresAt, c.TTL)
	setIfPresent(claims, "info", c.Info)
	setIfPresent(claims, "meta", c.Meta)
	if len(c.Channels) > 0 {
		claims["channels"] = c.Channels
	}
	if len(c.Subs) > 0 {
		subs := make(map[string]any, len(c.Subs))
		for ch, sub := range c.Subs {
			entry := map[string]any{}
			setIfPresent(entry, "info", sub.Info)
			setIfPresent(entry, "data", sub.Data)
			if o := sub.Override.claim(); len(o) > 0 {
				entry["override"] = o
			}
			subs[ch] = entry
		}
		claims["subs"] = subs
	}
	setStandard(claims, c.Audience, c.Issuer, c.Extra)
	return signJWT(s, claims)
}

// SubscriptionToken mints a subscription JWT letting user subscribe to channel (needed
// for private "$" channels, or to grant access regardless of namespace permissions).
func SubscriptionToken(s Signer, user, channel string, c SubscriptionClaims) (string, error) {
	if channel == "" {
		return "", errors.New("spinwire: subscription token needs a channel")
	}
	now := time.Now()
	claims := map[string]any{"sub": user, "channel": channel, "iat": now.Unix()}
	setExpiry(claims, now, c.ExpiresAt, c.TTL)
	setIfPresent(claims, "info", c.Info)
	setIfPresent(claims, "data", c.Data)
	if c.Client != "" {
		claims["client"] = c.Client
	}
	if o := c.Override.claim(); len(o) > 0 {
		claims["override"] = o
	}
	setStandard(claims, c.Audience, c.Issuer, c.Extra)
	return signJWT(s, claims)
}

func setExpiry(claims map[string]any, now, at time.Time, ttl time.Duration) {
	switch {
	case !at.IsZero():
		claims["exp"] = at.Unix()
	case ttl > 0:
		claims["exp"] = now.Add(ttl).Unix()
	}
}

func setIfPresent(claims map[string]any, name string, v any) {
	if v != nil {
		claims[name] = v
	}
}

func setStandard(claims map[string]any, aud, iss string, extra map[string]any) {
	if aud != "" {
		claims["aud"] = aud
	}
	if iss != "" {
		claims["iss"] = iss
	}
	for k, v := range extra {
		claims[k] = v
	}
}

func signJWT(s Signer, claims map[string]any) (string, error) {
	header, err := json.Marshal(map[string]string{"alg": s.Algorithm(), "typ": "JWT"})
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("spinwire: token claims: %w", err)
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	sig, err := s.Sign([]byte(input))
	if err != nil {
		return "", fmt.Errorf("spinwire: sign %s token: %w", s.Algorithm(), err)
	}
	return input + "." + enc.EncodeToString(sig), nil
}
