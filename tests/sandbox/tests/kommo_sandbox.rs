//! The Kommo sandbox behaves like the documented API: paging traps, auth,
//! filters, faults, webhooks, and deterministic data.

use std::sync::{Arc, Mutex};

use axum::{extract::State, routing::post, Router};
use reqwest::StatusCode;
use sandbox::kommo::{
    data, Faults, ForcedError, KommoOptions, KommoSandbox, WebhookAction, WebhookEvent,
};
use serde_json::Value;

type Received = Arc<Mutex<Vec<(String, String)>>>;

async fn start(leads: usize, contacts: usize) -> KommoSandbox {
    KommoSandbox::start(KommoOptions {
        seed: 11,
        leads,
        contacts,
        year: Some(2025),
        ..KommoOptions::default()
    })
    .await
    .expect("sandbox starts")
}

fn get(k: &KommoSandbox, path_and_query: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .get(format!("{}{}", k.base_url(), path_and_query))
        .bearer_auth(k.token())
}

async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn lead_ids(page: &Value) -> Vec<i64> {
    page["_embedded"]["leads"]
        .as_array()
        .expect("leads array")
        .iter()
        .map(|l| l["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn paging_ends_with_204_and_last_page_still_has_next_link() {
    let k = start(120, 10).await;
    let mut seen = Vec::new();
    for page in 1..=3 {
        let resp = get(
            &k,
            &format!("/api/v4/leads?limit=50&page={page}&order[id]=asc"),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/hal+json"
        );
        let body = json_of(resp).await;
        assert_eq!(body["_page"], page);
        let next = body["_links"]["next"]["href"]
            .as_str()
            .expect("next link on every page");
        assert!(next.contains(&format!("page={}", page + 1)), "{next}");
        assert!(next.starts_with(&k.base_url()));
        seen.extend(lead_ids(&body));
    }
    assert_eq!(seen.len(), 120, "two full pages and a short one");
    let all: Vec<i64> = k.leads().iter().map(|l| l.id).collect();
    assert_eq!(seen, all);

    let past = get(&k, "/api/v4/leads?limit=50&page=4")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::NO_CONTENT);
    assert!(
        past.bytes().await.unwrap().is_empty(),
        "204 has an empty body"
    );

    // No match at all is also 204, not an empty list.
    let none = get(&k, "/api/v4/leads?filter[id][]=1")
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn limit_over_250_falls_back_to_default_page_size() {
    let k = start(300, 5).await;
    let body = json_of(get(&k, "/api/v4/leads?limit=400").send().await.unwrap()).await;
    assert_eq!(lead_ids(&body).len(), 50);
    let body = json_of(get(&k, "/api/v4/leads?limit=250").send().await.unwrap()).await;
    assert_eq!(lead_ids(&body).len(), 250);
}

#[tokio::test]
async fn bad_or_missing_token_gets_401_problem_json() {
    let k = start(5, 5).await;
    let client = reqwest::Client::new();
    for req in [
        client.get(format!("{}/api/v4/leads", k.base_url())),
        client
            .get(format!("{}/api/v4/leads", k.base_url()))
            .bearer_auth("wrong-token"),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let body = json_of(resp).await;
        assert_eq!(body["status"], 401);
        assert_eq!(body["title"], "Unauthorized");
    }
    assert_eq!(k.stats().status(401), 2);
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let k = start(5, 5).await;
    k.set_rate_limit(Some(3));
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(get(&k, "/api/v4/account").send().await.unwrap().status());
    }
    let ok = codes.iter().filter(|c| **c == StatusCode::OK).count();
    let limited = codes
        .iter()
        .filter(|c| **c == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, limited), (3, 3), "{codes:?}");
    k.set_rate_limit(None);
    assert_eq!(
        get(&k, "/api/v4/account").send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn filters_by_id_and_created_at_and_embeds_contacts() {
    let k = start(400, 100).await;
    let leads = k.leads();
    let pick: Vec<i64> = leads.iter().step_by(37).map(|l| l.id).take(5).collect();
    let qs: String = pick
        .iter()
        .map(|id| format!("filter%5Bid%5D%5B%5D={id}&"))
        .collect();
    let body = json_of(
        get(
            &k,
            &format!("/api/v4/leads?{qs}with=contacts,catalog_elements"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(lead_ids(&body), pick);
    for l in body["_embedded"]["leads"].as_array().unwrap() {
        let stored = k.lead(l["id"].as_i64().unwrap()).unwrap();
        let contacts = l["_embedded"]["contacts"]
            .as_array()
            .expect("contacts embedded");
        assert_eq!(contacts.len(), stored.contact_ids.len());
        if let Some(first) = contacts.first() {
            assert_eq!(first["is_main"], true);
            assert_eq!(first["id"], stored.contact_ids[0]);
        }
        assert!(l["_embedded"]["catalog_elements"].is_array());
    }

    // One year, as the full refresh asks for it.
    let (from, to) = (1_735_689_600i64, 1_767_225_599i64); // 2025-01-01 .. 2025-12-31T23:59:59Z
    let expected: Vec<i64> = leads
        .iter()
        .filter(|l| l.created_at >= from && l.created_at <= to)
        .map(|l| l.id)
        .collect();
    assert!(!expected.is_empty() && expected.len() < leads.len());
    let mut got = Vec::new();
    for page in 1.. {
        let resp = get(
            &k,
            &format!("/api/v4/leads?filter[created_at][from]={from}&filter[created_at][to]={to}&limit=250&page={page}&order[created_at]=asc"),
        )
        .send()
        .await
        .unwrap();
        if resp.status() == StatusCode::NO_CONTENT {
            break;
        }
        got.extend(lead_ids(&json_of(resp).await));
    }
    assert_eq!(got, expected);

    let cid = leads
        .iter()
        .find_map(|l| l.contact_ids.first().copied())
        .unwrap();
    let body = json_of(
        get(&k, &format!("/api/v4/contacts?filter[id][]={cid}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let c = &body["_embedded"]["contacts"][0];
    assert_eq!(c["id"], cid);
    assert!(c.get("custom_fields_values").is_some());
}

#[tokio::test]
async fn same_seed_gives_same_account() {
    let a = start(150, 80).await;
    let b = start(150, 80).await;
    assert_eq!(a.leads(), b.leads());
    assert_eq!(a.contacts(), b.contacts());
    let page = |k: &KommoSandbox| {
        let k_url = k.base_url();
        let req = get(k, "/api/v4/leads?with=contacts&limit=100&page=2");
        async move {
            req.send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .replace(&k_url, "BASE")
        }
    };
    assert_eq!(page(&a).await, page(&b).await);

    let c = KommoSandbox::start(KommoOptions {
        seed: 12,
        leads: 150,
        contacts: 80,
        year: Some(2025),
        ..KommoOptions::default()
    })
    .await
    .unwrap();
    assert_ne!(a.leads(), c.leads());
}

#[tokio::test]
async fn account_reports_timezone() {
    let k = start(1, 1).await;
    let body = json_of(
        get(&k, "/api/v4/account?with=datetime_settings")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["id"], k.account().id);
    assert_eq!(
        body["_embedded"]["datetime_settings"]["timezone"],
        "Asia/Dubai"
    );
}

#[tokio::test]
async fn ip_blocked_gives_html_403_and_forced_errors_hit_the_nth_request() {
    let k = start(3, 3).await;
    k.set_ip_blocked(true);
    let resp = get(&k, "/api/v4/leads").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("<h1>403 Forbidden</h1>"));
    k.set_ip_blocked(false);

    k.set_forced_error(Some(ForcedError::once(2, 502)));
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(
            get(&k, "/api/v4/account")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, vec![200, 502, 200]);

    // The control endpoint sets the same knobs over HTTP.
    let faults = Faults {
        fail_leads_page: Some(2),
        ..Faults::default()
    };
    let resp = reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", k.base_url()))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(k.faults(), faults);
    assert_eq!(
        get(&k, "/api/v4/leads?limit=1&page=2")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&k, "/api/v4/leads?limit=1&page=1")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn status_change_is_visible_and_webhook_uses_kommo_form_format() {
    let k = start(50, 20).await;
    let lead = k
        .leads()
        .into_iter()
        .find(|l| l.field(data::FIELD_DELIVERY).is_some() && l.status_id != 142)
        .expect("a lead with a delivery date");
    let old = k.set_lead_status(lead.id, 142).unwrap();
    assert_eq!(old, lead.status_id);
    let body = json_of(
        get(&k, &format!("/api/v4/leads?filter[id][]={}", lead.id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let served = &body["_embedded"]["leads"][0];
    assert_eq!(served["status_id"], 142);
    assert!(served["updated_at"].as_i64().unwrap() > lead.updated_at);

    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(r): State<Received>,
                 headers: axum::http::HeaderMap,
                 body: String| async move {
                    let ct = headers["content-type"].to_str().unwrap_or("").to_string();
                    let ua = headers["user-agent"].to_str().unwrap_or("").to_string();
                    r.lock().unwrap().push((format!("{ct}|{ua}"), body));
                    "ok"
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let contact_id = k.contacts()[0].id;
    let resp = k
        .send_webhook(
            &format!("http://{addr}/hook"),
            &[
                WebhookEvent::lead_status(lead.id, old),
                WebhookEvent::contact(WebhookAction::Update, contact_id),
            ],
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (meta, raw) = &got[0];
    assert_eq!(
        meta,
        "application/x-www-form-urlencoded|amoCRM-Webhooks/3.0"
    );
    assert!(raw.contains("leads%5Bstatus%5D%5B0%5D%5Bid%5D="), "{raw}");
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).unwrap();
    let val = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k}"))
    };
    assert_eq!(val("account[id]"), k.account().id.to_string());
    assert_eq!(val("leads[status][0][id]"), lead.id.to_string());
    assert_eq!(val("leads[status][0][status_id]"), "142");
    assert_eq!(val("leads[status][0][old_status_id]"), old.to_string());
    assert_eq!(val("contacts[update][0][type]"), "contact");
    // Date fields carry the value directly, without a `[value]` key.
    let date_key = pairs
        .iter()
        .find(|(_, v)| *v == data::FIELD_DELIVERY.to_string())
        .map(|(key, _)| key.trim_end_matches("[id]").to_string())
        .expect("delivery field present");
    assert!(pairs
        .iter()
        .any(|(key, _)| *key == format!("{date_key}[values][0]")));
}
