//! The Kommo client against the Kommo sandbox: paging, chunking, retries,
//! rate limiting and typed errors.

use std::time::{Duration, Instant};

use sandbox::kommo::{ForcedError, KommoOptions, KommoSandbox};
use shared::{
    kommo::{KommoClient, KommoClientOptions, KommoError},
    platform::secrets::Redacted,
};

async fn sandbox(leads: usize, contacts: usize) -> KommoSandbox {
    KommoSandbox::start(KommoOptions {
        seed: 5,
        leads,
        contacts,
        year: Some(2025),
        ..KommoOptions::default()
    })
    .await
    .expect("sandbox starts")
}

fn fast_opts() -> KommoClientOptions {
    KommoClientOptions {
        rate_per_second: 1000,
        retry_min_delay: Duration::from_millis(5),
        retry_max_delay: Duration::from_millis(20),
        ..KommoClientOptions::default()
    }
}

fn client(k: &KommoSandbox, opts: KommoClientOptions) -> KommoClient {
    KommoClient::with_token(&k.base_url(), Redacted::new(k.token()), opts).unwrap()
}

const Y2025: (i64, i64) = (1_735_689_600, 1_767_225_599);

#[tokio::test]
async fn pages_through_a_year_and_stops_on_the_short_page() {
    let k = sandbox(700, 200).await;
    let c = client(&k, fast_opts());
    let expected: Vec<i64> = k
        .leads()
        .iter()
        .filter(|l| l.created_at >= Y2025.0 && l.created_at <= Y2025.1)
        .map(|l| l.id)
        .collect();
    assert!(
        expected.len() > 250,
        "needs several pages: {}",
        expected.len()
    );

    let mut got = Vec::new();
    let mut page = 1;
    loop {
        let p = c.leads_page(Y2025.0, Y2025.1, page, 100).await.unwrap();
        assert!(p.invalid.is_empty());
        got.extend(p.leads.iter().map(|l| l.id));
        if !p.has_next {
            break;
        }
        page += 1;
    }
    assert_eq!(got, expected);
    // The last page is short, so no request is wasted on a 204.
    assert_eq!(k.stats().leads, page as u64);
    assert_eq!(k.stats().status(204), 0);
    let p = c.leads_page(Y2025.0, Y2025.1, page + 1, 100).await.unwrap();
    assert!(
        p.leads.is_empty() && !p.has_next,
        "204 reads as an empty last page"
    );
}

#[tokio::test]
async fn a_full_last_page_is_followed_by_204() {
    let k = sandbox(60, 10).await;
    let c = client(&k, fast_opts());
    let all = k.leads().len() as u32;
    let p = c.leads_page(0, i64::MAX / 2, 1, all).await.unwrap();
    assert_eq!(p.leads.len() as u32, all);
    assert!(
        p.has_next,
        "a full page with a next link may have a successor"
    );
    let p = c.leads_page(0, i64::MAX / 2, 2, all).await.unwrap();
    assert!(p.leads.is_empty() && !p.has_next);
    assert_eq!(k.stats().status(204), 1);
}

#[tokio::test]
async fn leads_and_contacts_by_ids_are_chunked_and_embed_contacts() {
    let k = sandbox(100, 50).await;
    let c = client(
        &k,
        KommoClientOptions {
            ids_per_request: 3,
            ..fast_opts()
        },
    );
    let leads = k.leads();
    let mut ids: Vec<i64> = leads.iter().take(7).map(|l| l.id).collect();
    ids.push(ids[0]); // duplicates are asked for once
    ids.push(1); // unknown ids are simply absent
    let got = c.leads_by_ids(&ids).await.unwrap();
    assert_eq!(got.len(), 7);
    assert_eq!(k.stats().leads, 3, "8 distinct ids in chunks of 3");
    for l in &got {
        let stored = k.lead(l.id).unwrap();
        assert_eq!(l.main_contact_id(), stored.contact_ids.first().copied());
        assert_eq!(l.status_id, stored.status_id);
        assert_eq!(l.raw["id"], l.id);
    }

    let contact_ids: Vec<i64> = got.iter().filter_map(|l| l.main_contact_id()).collect();
    let contacts = c.contacts_by_ids(&contact_ids).await.unwrap();
    let mut want: Vec<i64> = contact_ids.clone();
    want.sort_unstable();
    want.dedup();
    let mut have: Vec<i64> = contacts.iter().map(|c| c.id).collect();
    have.sort_unstable();
    assert_eq!(have, want);
    assert!(c.leads_by_ids(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn account_timezone_is_read() {
    let k = sandbox(1, 1).await;
    let tz = client(&k, fast_opts()).account_timezone().await.unwrap();
    assert_eq!(tz.timezone, "Asia/Dubai");
    assert_eq!(tz.fixed_offset().unwrap().local_minus_utc(), 4 * 3600);
}

#[tokio::test]
async fn bad_token_is_a_clear_401_without_retries() {
    let k = sandbox(3, 3).await;
    let c =
        KommoClient::with_token(&k.base_url(), Redacted::new("wrong-token"), fast_opts()).unwrap();
    let err = c.leads_by_ids(&[1]).await.unwrap_err();
    assert!(matches!(err, KommoError::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.status(), Some(401));
    assert!(!err.to_string().contains("wrong-token"));
    assert_eq!(k.stats().total, 1);
}

#[tokio::test]
async fn ip_block_is_recognised_from_the_html_403() {
    let k = sandbox(3, 3).await;
    k.set_ip_blocked(true);
    let err = client(&k, fast_opts())
        .account_timezone()
        .await
        .unwrap_err();
    assert!(matches!(err, KommoError::IpBlocked { .. }), "{err:?}");
    assert!(err.body_excerpt().unwrap().contains("403 Forbidden"));
    assert!(err.to_string().contains("blocked"));
    assert_eq!(k.stats().total, 1, "403 is never retried");
}

#[tokio::test]
async fn a_429_then_200_succeeds() {
    let k = sandbox(20, 5).await;
    k.set_forced_error(Some(ForcedError::once(1, 429)));
    let id = k.leads()[0].id;
    let got = client(&k, fast_opts()).leads_by_ids(&[id]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(k.stats().status(429), 1);
    assert_eq!(k.stats().status(200), 1);
}

#[tokio::test]
async fn persistent_5xx_gives_up_with_status_and_excerpt() {
    let k = sandbox(20, 5).await;
    k.set_forced_error(Some(ForcedError::persistent(1, 503)));
    let opts = KommoClientOptions {
        max_retries: 2,
        ..fast_opts()
    };
    let err = client(&k, opts)
        .leads_page(Y2025.0, Y2025.1, 1, 250)
        .await
        .unwrap_err();
    match &err {
        KommoError::Api {
            status, problem, ..
        } => {
            assert_eq!(*status, 503);
            assert_eq!(problem.as_ref().and_then(|p| p.status), Some(503));
        }
        other => panic!("expected Api, got {other:?}"),
    }
    assert!(err.body_excerpt().unwrap().contains("Forced failure"));
    assert_eq!(k.stats().total, 3, "first attempt and two retries");
}

#[tokio::test]
async fn keeps_under_the_rate_limit() {
    let k = sandbox(5, 5).await;
    k.set_rate_limit(Some(10));
    let c = client(
        &k,
        KommoClientOptions {
            rate_per_second: 10,
            ..fast_opts()
        },
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..21)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.account_timezone().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(k.stats().status(429), 0, "the sandbox never had to refuse");
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

/// A Kommo secret in moto holding `access_token`, and its source.
async fn kommo_secret(
    k: &KommoSandbox,
    access_token: &str,
) -> (
    aws_config::SdkConfig,
    String,
    shared::platform::secrets::SecretSource<shared::platform::secrets::KommoSecret>,
) {
    let sdk = testkit::aws_config().await;
    let value = serde_json::json!({
        "base_url": k.base_url(), "access_token": access_token, "webhook_token": "wt"
    });
    let id = testkit::put_secret(&sdk, "kommo", &value).await;
    let secrets = shared::platform::secrets::Secrets::new(&sdk, Duration::from_secs(300))
        .await
        .unwrap();
    let source = shared::platform::secrets::SecretSource::Manager {
        secrets: std::sync::Arc::new(secrets),
        id: id.clone(),
    };
    (sdk, id, source)
}

#[tokio::test]
async fn a_token_renewed_in_the_secret_takes_effect_on_the_next_401_without_a_restart() {
    let k = sandbox(3, 3).await;
    let (sdk, id, source) = kommo_secret(&k, "token-before-renewal").await;
    let c = KommoClient::from_source(source, fast_opts()).await.unwrap();

    // An operator renews the long-lived token and puts it in the secret.
    let renewed = serde_json::json!({
        "base_url": k.base_url(), "access_token": k.token(), "webhook_token": "wt"
    });
    aws_sdk_secretsmanager::Client::new(&sdk)
        .put_secret_value()
        .secret_id(&id)
        .secret_string(renewed.to_string())
        .send()
        .await
        .unwrap();

    let lead = k.leads()[0].id;
    let leads = c.leads_by_ids(&[lead]).await.unwrap();
    assert_eq!(
        leads.len(),
        1,
        "the request succeeds with the renewed token"
    );
    let statuses: Vec<u16> = k.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 200], "one refusal, one retry");

    k.reset_stats();
    c.leads_by_ids(&[lead]).await.unwrap();
    let statuses: Vec<u16> = k.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200], "later requests use the renewed token");
}

#[tokio::test]
async fn a_refused_token_that_the_secret_still_holds_stays_a_clear_401() {
    let k = sandbox(3, 3).await;
    let (_sdk, _id, source) = kommo_secret(&k, "revoked-token").await;
    let c = KommoClient::from_source(source, fast_opts()).await.unwrap();
    let err = c.leads_by_ids(&[1]).await.unwrap_err();
    assert!(matches!(err, KommoError::Unauthorized { .. }), "{err:?}");
    assert!(!err.to_string().contains("revoked-token"));
    assert_eq!(k.stats().total, 1, "no second request with the same token");
}
