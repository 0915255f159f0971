//! `.env.example`: the settings `cargo xtask dev` gives the functions on its
//! fixed ports, so that plain `cargo lambda watch`, which reads the file
//! through `[workspace.metadata.lambda.watch]` in `Cargo.toml`, reaches the
//! same stack. Also the env files xtask hands its own `cargo lambda watch`.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};

/// Where `cargo xtask dev` runs each part, as `.env.example` names them.
pub const PG_PORT: u16 = 54329;
pub const MOTO_PORT: u16 = 54330;
pub const KOMMO_PORT: u16 = 54331;
pub const ZOHO_PORT: u16 = 54332;
/// The prefix of the queues and secrets the local stack provisions.
pub const PREFIX: &str = "dev";
pub const EXAMPLE: &str = ".env.example";

/// `KEY=VALUE` lines, under a header that says where they come from.
pub fn render(env: &[(String, String)]) -> String {
    let mut out = String::from(
        "# Settings of the functions under `cargo lambda watch`, for the stack that\n\
         # `cargo xtask dev` starts (PostgreSQL, moto, Kommo and Zoho sandboxes on\n\
         # the ports below). Plain `cargo lambda watch` reads this file through\n\
         # [workspace.metadata.lambda.watch] in Cargo.toml. Checked by `cargo test -p xtask`.\n",
    );
    for (k, v) in env {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

/// The `KEY=VALUE` lines of an env file; comments and blank lines skipped.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Writes `env` as an env file for `cargo lambda watch --env-file`.
pub fn write(path: &Path, env: &[(String, String)]) -> Result<()> {
    std::fs::write(path, render(env)).with_context(|| format!("write {}", path.display()))
}

/// `env` as the example file can hold it: a secret by its name, since
/// moto's ARNs end in a random suffix (the functions accept either).
pub fn comparable(env: &[(String, String)]) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let v = match v.split_once(":secret:") {
                Some((_, name)) if k.ends_with("_SECRET_ID") => {
                    name.rsplit_once('-').map_or(name, |(n, _)| n).to_string()
                }
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// The keys whose values differ between `file` and `env` (or that only one has).
pub fn differences(file: &BTreeMap<String, String>, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<&String> = file.keys().chain(env.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| file.get(*k) != env.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devstack;

    /// The account moto puts in every queue URL.
    const MOTO_ACCOUNT: &str = "123456789012";

    /// What `cargo xtask dev` gives the functions when it starts every part
    /// itself on the ports above.
    fn dev_defaults() -> Vec<(String, String)> {
        let aws = format!("http://127.0.0.1:{MOTO_PORT}");
        let queue = |name: &str| format!("{aws}/{MOTO_ACCOUNT}/{PREFIX}-{name}");
        let provisioned = [
            ("KOMMO_SECRET_ID", format!("{PREFIX}/kommo")),
            ("ZOHO_SECRET_ID", format!("{PREFIX}/zoho")),
            ("STAFF_JWT_SECRET_ID", format!("{PREFIX}/staff-jwt")),
            ("KOMMO_EVENTS_QUEUE_URL", queue(wiring::KOMMO_EVENTS_QUEUE)),
            (
                "FULL_REFRESH_QUEUE_URL",
                queue(wiring::FULL_REFRESH_JOBS_QUEUE),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v));
        devstack::function_env(
            &format!("postgres://postgres@127.0.0.1:{PG_PORT}/postgres"),
            &aws,
            provisioned.to_vec(),
        )
    }

    #[test]
    fn the_committed_example_is_what_dev_provisions() {
        let path = crate::root().join(EXAMPLE);
        let text = std::fs::read_to_string(&path).expect("read .env.example");
        let want = dev_defaults();
        assert_eq!(
            differences(&parse(&text), &want.iter().cloned().collect()),
            Vec::<String>::new(),
            "regenerate it: it should read\n{}",
            render(&want)
        );
    }

    #[test]
    fn the_workspace_metadata_points_watch_at_the_example() {
        let text = std::fs::read_to_string(crate::root().join("Cargo.toml")).unwrap();
        let section = text
            .split("[workspace.metadata.lambda.watch]")
            .nth(1)
            .expect("a [workspace.metadata.lambda.watch] table");
        assert!(section.contains(&format!("env_file = \"{EXAMPLE}\"")));
        for route in [
            "\"/kommo/webhook/{token}\"",
            "\"/bookings\"",
            "\"/integrations/kommo/full-refresh\"",
            "\"/integrations/kommo/full-refresh/{runId}\"",
        ] {
            assert!(section.contains(route), "no route {route}");
        }
    }

    #[test]
    fn secret_arns_compare_by_name() {
        let env = vec![(
            "KOMMO_SECRET_ID".to_string(),
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:dev/kommo-AbCdEf".to_string(),
        )];
        assert_eq!(comparable(&env)["KOMMO_SECRET_ID"], "dev/kommo");
    }
}
