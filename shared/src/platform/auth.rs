//! Staff JWTs issued by the ERP: HS256, `sub` is the user, a role claim is
//! checked against the configured list.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::platform::secrets::StaffJwtSecret;

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
    let header = authorization.ok_or(AuthError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(AuthError::Missing)?
        .trim();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    if let Some(iss) = &secret.issuer {
        validation.set_issuer(&[iss]);
    }
    match &secret.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.hs256_secret.expose().as_bytes()),
        &validation,
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

/// Issues a token (tests, sample events and the local dev stack).
pub fn issue_staff_token(secret: &str, sub: &str, role: &str, ttl_seconds: i64) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "role": role,
        "exp": chrono::Utc::now().timestamp() + ttl_seconds,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding of JSON claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::secrets::Redacted;

    fn secret() -> StaffJwtSecret {
        StaffJwtSecret {
            hs256_secret: Redacted::new("k3y"),
            issuer: None,
            audience: None,
        }
    }

    #[test]
    fn role_and_signature_are_checked() {
        let roles = vec!["admin".to_string()];
        let ok = issue_staff_token("k3y", "user-1", "admin", 60);
        let staff = verify_staff(Some(&format!("Bearer {ok}")), &secret(), &roles).unwrap();
        assert_eq!(staff.sub, "user-1");

        let sales = issue_staff_token("k3y", "user-2", "sales", 60);
        assert_eq!(
            verify_staff(Some(&format!("Bearer {sales}")), &secret(), &roles),
            Err(AuthError::Forbidden("sales".into()))
        );
        let forged = issue_staff_token("other", "user-1", "admin", 60);
        assert!(matches!(
            verify_staff(Some(&format!("Bearer {forged}")), &secret(), &roles),
            Err(AuthError::Invalid(_))
        ));
        let expired = issue_staff_token("k3y", "user-1", "admin", -3600);
        assert!(matches!(
            verify_staff(Some(&format!("Bearer {expired}")), &secret(), &roles),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            verify_staff(None, &secret(), &roles),
            Err(AuthError::Missing)
        );
    }
}
