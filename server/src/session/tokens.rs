//! Token verification with the key wherever it lives: the verifier's static keys, or the
//! issuer's JWKS (fetched through the node's cache, so this may wait on the network).

use std::sync::Arc;

use jsonwebtoken::jwk::Jwk;

use super::Session;
use crate::auth::{ConnectClaims, SubscribeClaims, TokenError, TokenVerifier};
use crate::jwks::Jwks;

impl Session {
    pub(super) async fn verify_connect_token(
        &self,
        token: &str,
        now: i64,
    ) -> Result<ConnectClaims, TokenError> {
        let verifier = &self.node.connect_tokens;
        let jwk = jwks_key(verifier, self.node.connect_jwks.as_ref(), token).await?;
        verifier.verify_connect_with(token, now, jwk.as_deref())
    }

    pub(super) async fn verify_subscribe_token(
        &self,
        token: &str,
        now: i64,
    ) -> Result<SubscribeClaims, TokenError> {
        let verifier = &self.node.subscribe_tokens;
        let jwk = jwks_key(verifier, self.node.subscribe_jwks.as_ref(), token).await?;
        verifier.verify_subscribe_with(token, now, jwk.as_deref())
    }
}

/// The JWKS key `token` names, when `verifier` uses a JWKS; a key that cannot be had makes
/// the token invalid (as in Centrifugo).
async fn jwks_key(
    verifier: &TokenVerifier,
    jwks: Option<&Jwks>,
    token: &str,
) -> Result<Option<Arc<Jwk>>, TokenError> {
    let Some(lookup) = verifier.jwks_lookup(token)? else {
        return Ok(None);
    };
    let Some(jwks) = jwks else {
        return Err(TokenError::Invalid("no JWKS configured".into()));
    };
    jwks.key(&lookup).await.map(Some).map_err(|error| TokenError::Invalid(error.to_string()))
}
