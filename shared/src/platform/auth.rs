//! Staff JWTs issued by the ERP: HS256 with a key of at least 32 bytes, a
//! required issuer and audience, `exp` and `nbf` checked, `sub` is the user,
//! and a role claim is checked against the configured list.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::platform::secrets::{SecretError, SecretSource, StaffJwtSecret};

/// An HS256 key shorter than the hash it feeds can be guessed offline from
/// one captured token (RFC 7518 §3.2).
pub const MIN_KEY_BYTES: usize = 32;

/// The issuer and audience of the local stack's staff-jwt secret (provisioned
/// by `tests/wiring`), which the sample events' tokens carry.
pub const LOCAL_ISSUER: &str = "erp-local";
pub const LOCAL_AUDIENCE: &str = "kommo-integration-local";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staff {
    pub sub: String,
    pub role: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("role `{0}` may not do this")]
    Forbidden(String),
    #[error(transparent)]
    Misconfigured(#[from] JwtConfigError),
}

/// A staff-jwt secret the function must not run with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwtConfigError {
    #[error("the staff JWT key (`hs256_secret`) is {0} bytes long; it must be at least {MIN_KEY_BYTES} bytes")]
    ShortKey(usize),
    #[error(
        "the staff JWT secret has no `issuer`; set it to the `iss` the ERP puts in its tokens"
    )]
    NoIssuer,
    #[error(
        "the staff JWT secret has no `audience`; set it to the `aud` the ERP puts in its tokens"
    )]
    NoAudience,
}

/// Why a function refuses to start with its staff-jwt secret.
#[derive(Debug, thiserror::Error)]
pub enum StaffKeyError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Config(#[from] JwtConfigError),
}

/// What a token must satisfy, read from the secret and checked once.
#[derive(Debug, Clone, Copy)]
pub struct StaffJwtRules<'a> {
    key: &'a [u8],
    issuer: &'a str,
    audience: &'a str,
}

impl<'a> StaffJwtRules<'a> {
    pub fn from_secret(secret: &'a StaffJwtSecret) -> Result<Self, JwtConfigError> {
        let key = secret.hs256_secret.expose().as_bytes();
        if key.len() < MIN_KEY_BYTES {
            return Err(JwtConfigError::ShortKey(key.len()));
        }
        let set = |v: &'a Option<String>| v.as_deref().filter(|s| !s.trim().is_empty());
        Ok(StaffJwtRules {
            key,
            issuer: set(&secret.issuer).ok_or(JwtConfigError::NoIssuer)?,
            audience: set(&secret.audience).ok_or(JwtConfigError::NoAudience)?,
        })
    }

    fn validation(&self) -> Validation {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[self.issuer]);
        validation.set_audience(&[self.audience]);
        validation.validate_nbf = true;
        validation
    }
}

/// Reads the secret once at cold start: a function whose key is short or
/// whose issuer or audience is missing stops here with the reason, instead
/// of answering every staff request with 503.
pub async fn check_staff_key(source: &SecretSource<StaffJwtSecret>) -> Result<(), StaffKeyError> {
    let secret = source.get().await?;
    StaffJwtRules::from_secret(&secret)?;
    Ok(())
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

/// Verifies `Authorization: Bearer <jwt>` and the role.
pub fn verify_staff(
    authorization: Option<&str>,
    secret: &StaffJwtSecret,
    allowed_roles: &[String],
) -> Result<Staff, AuthError> {
    let rules = StaffJwtRules::from_secret(secret)?;
    let header = authorization.ok_or(AuthError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(AuthError::Missing)?
        .trim();
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(rules.key),
        &rules.validation(),
    )
    .map_err(|e| AuthError::Invalid(format!("{:?}", e.kind())))?;
    let claims = data.claims;
    let roles: Vec<String> = claims
        .roles
        .unwrap_or_default()
        .into_iter()
        .chain(claims.role)
        .collect();
    match roles.iter().find(|r| allowed_roles.contains(r)) {
        Some(role) => Ok(Staff {
            sub: claims.sub,
            role: role.clone(),
        }),
        None => Err(AuthError::Forbidden(
            roles.first().cloned().unwrap_or_else(|| "none".into()),
        )),
    }
}

/// Signs arbitrary claims with HS256 (tests that need an odd claim set).
pub fn sign_staff_claims(key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("HS256 encoding of JSON claims cannot fail")
}

/// Issues a token for the local stack's issuer and audience (tests, sample
/// events and the local dev stack).
pub fn issue_staff_token(key: &str, sub: &str, role: &str, ttl_seconds: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    sign_staff_claims(
        key,
        &serde_json::json!({
            "sub": sub,
            "role": role,
            "iss": LOCAL_ISSUER,
            "aud": LOCAL_AUDIENCE,
            "nbf": now - 60,
            "exp": now + ttl_seconds,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::secrets::Redacted;

    const KEY: &str = "unit-test-staff-jwt-key-of-32-bytes!";

    fn secret() -> StaffJwtSecret {
        StaffJwtSecret {
            hs256_secret: Redacted::new(KEY),
            issuer: Some(LOCAL_ISSUER.into()),
            audience: Some(LOCAL_AUDIENCE.into()),
        }
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn role_and_signature_are_checked() {
        let roles = vec!["admin".to_string()];
        let ok = issue_staff_token(KEY, "user-1", "admin", 60);
        let staff = verify_staff(Some(&bearer(&ok)), &secret(), &roles).unwrap();
        assert_eq!(staff.sub, "user-1");

        let sales = issue_staff_token(KEY, "user-2", "sales", 60);
        assert_eq!(
            verify_staff(Some(&bearer(&sales)), &secret(), &roles),
            Err(AuthError::Forbidden("sales".into()))
        );
        let forged =
            issue_staff_token("another-key-that-is-32-bytes-long!!", "user-1", "admin", 60);
        assert!(matches!(
            verify_staff(Some(&bearer(&forged)), &secret(), &roles),
            Err(AuthError::Invalid(_))
        ));
        let expired = issue_staff_token(KEY, "user-1", "admin", -3600);
        assert!(matches!(
            verify_staff(Some(&bearer(&expired)), &secret(), &roles),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            verify_staff(None, &secret(), &roles),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn issuer_audience_and_not_before_are_enforced() {
        let roles = vec!["admin".to_string()];
        let now = chrono::Utc::now().timestamp();
        let claims = |patch: Value| {
            let mut c = serde_json::json!({
                "sub": "u", "role": "admin", "iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE,
                "exp": now + 600,
            });
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            sign_staff_claims(KEY, &c)
        };
        let verdict = |token: String| verify_staff(Some(&bearer(&token)), &secret(), &roles);
        assert!(verdict(claims(serde_json::json!({}))).is_ok());
        for (patch, kind) in [
            (serde_json::json!({"iss": "someone-else"}), "InvalidIssuer"),
            (
                serde_json::json!({"iss": null}),
                "MissingRequiredClaim(\"iss\")",
            ),
            (serde_json::json!({"aud": "other-app"}), "InvalidAudience"),
            (
                serde_json::json!({"aud": null}),
                "MissingRequiredClaim(\"aud\")",
            ),
            (serde_json::json!({"nbf": now + 3600}), "ImmatureSignature"),
        ] {
            assert_eq!(
                verdict(claims(patch.clone())),
                Err(AuthError::Invalid(kind.into())),
                "{patch}"
            );
        }
    }

    #[test]
    fn a_short_key_or_a_missing_issuer_or_audience_is_refused() {
        let mut s = secret();
        s.hs256_secret = Redacted::new("k3y");
        assert_eq!(
            StaffJwtRules::from_secret(&s).unwrap_err(),
            JwtConfigError::ShortKey(3)
        );
        let token = issue_staff_token("k3y", "u", "admin", 60);
        assert_eq!(
            verify_staff(Some(&bearer(&token)), &s, &["admin".into()]),
            Err(AuthError::Misconfigured(JwtConfigError::ShortKey(3)))
        );
        let mut s = secret();
        s.issuer = Some(" ".into());
        assert_eq!(
            StaffJwtRules::from_secret(&s).unwrap_err(),
            JwtConfigError::NoIssuer
        );
        let mut s = secret();
        s.audience = None;
        assert_eq!(
            StaffJwtRules::from_secret(&s).unwrap_err(),
            JwtConfigError::NoAudience
        );
        assert!(JwtConfigError::ShortKey(3)
            .to_string()
            .contains("at least 32 bytes"));
    }
}
