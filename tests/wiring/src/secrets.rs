//! The secrets the functions read, as the documents `shared::platform::secrets`
//! parses, and their creation or update in Secrets Manager.

use aws_sdk_secretsmanager::Client as SecretsClient;
use serde_json::{json, Value};

use crate::{
    error::{secrets_err, WiringError},
    ProvisionSpec,
};

/// Kommo secret contents (`shared::platform::secrets::KommoSecret`).
#[derive(Debug, Clone)]
pub struct KommoSecretSpec {
    /// Usually the Kommo sandbox's URL.
    pub base_url: String,
    pub access_token: String,
    pub webhook_token: String,
    pub account_id: Option<i64>,
}

/// Zoho secret contents (`shared::platform::secrets::ZohoSecret`).
#[derive(Debug, Clone)]
pub struct ZohoSecretSpec {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// Usually the Zoho sandbox's URL (it serves `/oauth/v2/token`).
    pub accounts_url: String,
    pub api_domain: Option<String>,
}

/// Staff JWT secret contents (`shared::platform::secrets::StaffJwtSecret`).
#[derive(Debug, Clone)]
pub struct StaffJwtSecretSpec {
    pub hs256_secret: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// RDS-format database secret contents (`shared::platform::secrets::DbSecret`).
#[derive(Debug, Clone)]
pub struct DbSecretSpec {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub dbname: String,
}

/// The secret JSON documents, in the shapes `shared::platform::secrets` parses.
pub fn secret_documents(spec: &ProvisionSpec) -> Vec<(&'static str, Value)> {
    let mut docs = vec![
        (
            "kommo",
            json!({
                "base_url": spec.kommo.base_url,
                "access_token": spec.kommo.access_token,
                "webhook_token": spec.kommo.webhook_token,
                "account_id": spec.kommo.account_id,
            }),
        ),
        (
            "zoho",
            json!({
                "client_id": spec.zoho.client_id,
                "client_secret": spec.zoho.client_secret,
                "refresh_token": spec.zoho.refresh_token,
                "accounts_url": spec.zoho.accounts_url,
                "api_domain": spec.zoho.api_domain,
            }),
        ),
        (
            "staff-jwt",
            json!({
                "hs256_secret": spec.staff_jwt.hs256_secret,
                "issuer": spec.staff_jwt.issuer,
                "audience": spec.staff_jwt.audience,
            }),
        ),
    ];
    if let Some(db) = &spec.db {
        docs.push((
            "db",
            json!({
                "engine": "postgres",
                "host": db.host,
                "port": db.port,
                "username": db.username,
                "password": db.password,
                "dbname": db.dbname,
            }),
        ));
    }
    if let Some(url) = &spec.slack_webhook_url {
        docs.push(("slack", json!({ "webhook_url": url })));
    }
    docs
}

/// Creates the secret, or puts the new value into an existing one; returns its ARN.
pub(crate) async fn ensure_secret(
    sm: &SecretsClient,
    name: &str,
    value: &str,
) -> Result<String, WiringError> {
    match sm
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
    {
        Ok(out) => return out.arn.ok_or_else(|| no_arn("CreateSecret", name)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_exists_exception()) => {}
        Err(e) => return Err(secrets_err("CreateSecret", name, e)),
    }
    let out = sm
        .put_secret_value()
        .secret_id(name)
        .secret_string(value)
        .send()
        .await
        .map_err(|e| secrets_err("PutSecretValue", name, e))?;
    out.arn.ok_or_else(|| no_arn("PutSecretValue", name))
}

fn no_arn(operation: &'static str, secret: &str) -> WiringError {
    WiringError::Secrets {
        operation,
        secret: secret.to_string(),
        reason: "no ARN in the answer".to_string(),
    }
}
