//! A database password rotated in Secrets Manager while a container is warm.
//!
//! Needs a server that checks passwords for members of `password_checked`
//! (`cargo xtask test` starts one): a trusting server would accept any
//! password and prove nothing.

use std::time::Duration;

use serde_json::json;
use shared::platform::{config::Config, db::DbSettings, secrets::Secrets};
use testkit::TestDb;
use tokio_postgres::{config::Host, NoTls};

/// A login role in the password-checked group, with `password`.
async fn login_role(db: &TestDb, password: &str) -> String {
    let admin = db.client().await;
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE password_checked NOLOGIN;
               EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        )
        .await
        .unwrap();
    let role = format!(
        "rotating_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE password_checked;
             GRANT ALL ON DATABASE {} TO {role};",
            db.name
        ))
        .await
        .unwrap();
    role
}

fn host_and_port(db: &TestDb) -> (String, u16) {
    let pg: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => panic!("the rotation test needs a TCP DATABASE_URL"),
    };
    (host, pg.get_ports().first().copied().unwrap_or(5432))
}

fn rds_secret(db: &TestDb, role: &str, password: &str) -> serde_json::Value {
    let (host, port) = host_and_port(db);
    json!({"engine": "postgres", "host": host, "port": port, "username": role,
           "password": password, "dbname": db.name})
}

async fn current_user(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_rotated_database_password_takes_effect_without_a_restart() {
    let db = TestDb::new().await;
    let role = login_role(&db, "password-one").await;
    let (host, port) = host_and_port(&db);
    let wrong = format!("postgres://{role}:not-it@{host}:{port}/{}", db.name);
    assert!(
        tokio_postgres::connect(&wrong, NoTls).await.is_err(),
        "the PostgreSQL at DATABASE_URL accepts any password for members of `password_checked`; \
         put `host all +password_checked 127.0.0.1/32 scram-sha-256` first in its pg_hba.conf \
         (the cluster `cargo xtask test` starts has it)"
    );

    let sdk = testkit::aws_config().await;
    let id = testkit::put_secret(&sdk, "db", &rds_secret(&db, &role, "password-one")).await;
    let secrets = Secrets::new(&sdk, Duration::from_secs(300)).await.unwrap();
    let config = Config::from_lookup(&[], |k| (k == "DB_SECRET_ID").then(|| id.clone())).unwrap();
    let settings = DbSettings::resolve(&config, Some(&secrets)).await.unwrap();
    let pool = settings.pool().unwrap();
    let first = pool.get().await.unwrap();
    assert_eq!(current_user(&first).await, role);

    // Rotation, as the Secrets Manager rotation function does it: the
    // password changes in Postgres and in the secret, well within the TTL.
    db.client()
        .await
        .batch_execute(&format!("ALTER ROLE {role} PASSWORD 'password-two'"))
        .await
        .unwrap();
    aws_sdk_secretsmanager::Client::new(&sdk)
        .put_secret_value()
        .secret_id(&id)
        .secret_string(rds_secret(&db, &role, "password-two").to_string())
        .send()
        .await
        .unwrap();

    // The pool opens a second connection: refused, the secret read again, opened.
    let second = pool
        .get()
        .await
        .expect("a new pooled connection after rotation");
    assert_eq!(current_user(&second).await, role);
    assert_eq!(
        current_user(&first).await,
        role,
        "open connections are unaffected"
    );
    // Later connections use the new password straight away.
    let single = settings
        .connect()
        .await
        .expect("a single connection after rotation");
    assert_eq!(current_user(&single).await, role);
    drop((first, second, single, pool));

    // Roles outlive the test's database; this one is not left behind.
    db.client()
        .await
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {} FROM {role}; DROP ROLE {role};",
            db.name
        ))
        .await
        .ok();
}
