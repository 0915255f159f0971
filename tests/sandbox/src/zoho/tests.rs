//! The sandbox's documented behaviour, checked over HTTP.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;

async fn start() -> ZohoSandbox {
    ZohoSandbox::start(ZohoOptions::default()).await.unwrap()
}

async fn refresh(z: &ZohoSandbox) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/oauth/v2/token", z.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", z.client_id().as_str()),
            ("client_secret", z.client_secret().as_str()),
            ("refresh_token", z.refresh_token().as_str()),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn token(z: &ZohoSandbox) -> String {
    let (_, body) = refresh(z).await;
    body["access_token"].as_str().unwrap().to_string()
}

async fn post(z: &ZohoSandbox, path: &'static str, token: &str, body: Value) -> (u16, Value) {
    post_to(z.base_url(), path, token.to_string(), body).await
}

async fn post_to(base: String, path: &'static str, token: String, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("Authorization", format!("Zoho-oauthtoken {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn order(booking: &str, contact: Option<&str>) -> Value {
    let mut o = json!({
        "Subject": format!("Booking {booking}"),
        "ERP_Booking_Id": booking,
        "Ordered_Items": [{"Product_Name": {"id": "5725767000011358006"}, "Quantity": 1, "List_Price": 120.0}],
    });
    if let Some(c) = contact {
        o["Contact_Name"] = json!({"id": c});
    }
    o
}

#[tokio::test]
async fn token_endpoint_throttles_after_ten_refreshes_in_the_window() {
    let z = start().await;
    for _ in 0..10 {
        let (status, body) = refresh(&z).await;
        assert_eq!(status, 200);
        assert_eq!(body["api_domain"], z.base_url());
        assert_eq!(body["expires_in"], 3600);
    }
    let (status, body) = refresh(&z).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "Access Denied");
    assert_eq!(body["status"], "failure");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("too many requests continuously"));
    assert!(body.get("access_token").is_none());
    let st = z.state();
    assert_eq!(st.token_refreshes, 10);
    assert_eq!(st.token_throttled, 1);
    assert_eq!(st.calls_to(ENDPOINT_TOKEN), 11);
}

#[tokio::test]
async fn throttle_lifts_when_the_window_passes() {
    let z = ZohoSandbox::start(ZohoOptions {
        refresh_limit: 2,
        refresh_window: Duration::from_millis(300),
        throttle_status: 200,
        ..Default::default()
    })
    .await
    .unwrap();
    refresh(&z).await;
    refresh(&z).await;
    let (status, body) = refresh(&z).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (200, Some("Access Denied"))
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, body) = refresh(&z).await;
    assert!(body["access_token"].is_string(), "{body}");
}

#[tokio::test]
async fn token_errors_are_http_200_with_an_error_key() {
    let z = start().await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/oauth/v2/token", z.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "1000.WRONG"),
            ("client_secret", "x"),
            ("refresh_token", "y"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "invalid_client"})
    );

    // Parameters in the query string work as on Zoho's doc pages.
    let url = format!(
        "{}/oauth/v2/token?grant_type=refresh_token&client_id={}&client_secret={}&refresh_token=revoked",
        z.base_url(),
        z.client_id(),
        z.client_secret()
    );
    let body: Value = client.post(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body, json!({"error": "invalid_code"}));
    assert_eq!(z.state().token_refreshes, 0);
}

#[tokio::test]
async fn expired_unknown_and_evicted_tokens_get_401() {
    let z = ZohoSandbox::start(ZohoOptions {
        max_active_tokens: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let rec = json!({"data": [{"Last_Name": "Kingsley", "Email": "a@example.com"}]});

    let (status, body) = post(&z, "/crm/v8/Contacts/upsert", "1000.unknown", rec.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "INVALID_TOKEN");

    let t1 = token(&z).await;
    assert_eq!(
        post(&z, "/crm/v8/Contacts/upsert", &t1, rec.clone())
            .await
            .0,
        200
    );
    let _t2 = token(&z).await;
    let _t3 = token(&z).await;
    // The third token pushed the first one out.
    let (status, body) = post(&z, "/crm/v8/Contacts/upsert", &t1, rec.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("INVALID_TOKEN"))
    );

    let t4 = token(&z).await;
    z.expire_all_tokens();
    let (status, body) = post(&z, "/crm/v8/Contacts/upsert", &t4, rec.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("INVALID_TOKEN"))
    );

    // Bearer is not Zoho's scheme.
    let t5 = token(&z).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/crm/v8/Contacts/upsert", z.base_url()))
        .bearer_auth(&t5)
        .json(&rec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["code"],
        "AUTHENTICATION_FAILURE"
    );
}

#[tokio::test]
async fn short_token_lifetime_expires() {
    let z = ZohoSandbox::start(ZohoOptions {
        token_lifetime: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .unwrap();
    let t = token(&z).await;
    assert!(z.token_is_valid(&t));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!z.token_is_valid(&t));
    let (status, _) = post(
        &z,
        "/crm/v8/Contacts/upsert",
        &t,
        json!({"data": [{"Last_Name": "X"}]}),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn upsert_reports_per_record_results_with_200_207_and_400() {
    let z = start().await;
    z.reject_records_where("Email", "bad@example.com");
    let t = token(&z).await;

    let (status, body) = post(
        &z,
        "/crm/v8/Contacts/upsert",
        &t,
        json!({"data": [
            {"Last_Name": "Kingsley", "Email": "anna@example.com"},
            {"First_Name": "NoLast", "Email": "nolast@example.com"},
            {"Last_Name": "Bad", "Email": "bad@example.com"},
            {"Last_Name": "Phone", "Phone": "call me"},
        ], "duplicate_check_fields": ["Email"]}),
    )
    .await;
    assert_eq!(status, 207);
    let d = body["data"].as_array().unwrap();
    assert_eq!(d.len(), 4);
    assert_eq!(d[0]["code"], "SUCCESS");
    assert_eq!(d[0]["action"], "insert");
    let anna_id = d[0]["details"]["id"].as_str().unwrap().to_string();
    assert_eq!(anna_id.len(), 19);
    assert_eq!(d[1]["code"], "MANDATORY_NOT_FOUND");
    assert_eq!(d[1]["details"]["api_name"], "Last_Name");
    assert_eq!(d[2]["code"], "INVALID_DATA");
    assert_eq!(d[2]["details"]["json_path"], "$.data[2].Email");
    assert_eq!(d[3]["code"], "INVALID_DATA");
    assert_eq!(d[3]["details"]["expected_data_type"], "phone");

    // Same email again: an update of the same record, HTTP 200.
    let (status, body) = post(
        &z,
        "/crm/v8/Contacts/upsert",
        &t,
        json!({"data": [{"Last_Name": "Kingsley-Smith", "Email": "anna@example.com"}],
               "duplicate_check_fields": ["Email"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["action"], "update");
    assert_eq!(body["data"][0]["duplicate_field"], "Email");
    assert_eq!(body["data"][0]["details"]["id"], anna_id.as_str());

    let (status, _) = post(
        &z,
        "/crm/v8/Contacts/upsert",
        &t,
        json!({"data": [{"Email": "x@example.com"}, {"Last_Name": "Bad", "Email": "bad@example.com"}]}),
    )
    .await;
    assert_eq!(status, 400);

    let many: Vec<Value> = (0..101)
        .map(|i| json!({"Last_Name": format!("N{i}")}))
        .collect();
    let (status, body) = post(&z, "/crm/v8/Contacts/upsert", &t, json!({"data": many})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("LIMIT_EXCEEDED"))
    );

    let st = z.state();
    assert_eq!(st.contacts.len(), 1);
    let anna = st.contact_by("Email", "anna@example.com").unwrap();
    assert_eq!(anna.writes, 2);
    assert_eq!(anna.fields["Last_Name"], "Kingsley-Smith");
    assert_eq!(st.calls_to(ENDPOINT_CONTACTS_UPSERT), 4);
}

#[tokio::test]
async fn sales_order_unique_field_yields_duplicate_data_with_the_existing_id() {
    let z = start().await;
    let t = token(&z).await;
    let (_, c) = post(
        &z,
        "/crm/v8/Contacts/upsert",
        &t,
        json!({"data": [{"Last_Name": "Boyle"}]}),
    )
    .await;
    let contact = c["data"][0]["details"]["id"].as_str().unwrap().to_string();

    let (status, body) = post(
        &z,
        "/crm/v8/Sales_Orders",
        &t,
        json!({"data": [order("b-1", Some(&contact))]}),
    )
    .await;
    assert_eq!(status, 201);
    let id = body["data"][0]["details"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, body) = post(
        &z,
        "/crm/v8/Sales_Orders",
        &t,
        json!({"data": [order("b-1", Some(&contact))]}),
    )
    .await;
    assert_eq!(status, 400);
    let item = &body["data"][0];
    assert_eq!(item["code"], "DUPLICATE_DATA");
    assert_eq!(item["details"]["api_name"], "ERP_Booking_Id");
    assert_eq!(item["details"]["duplicate_record"]["id"], id.as_str());

    let mut no_items = order("b-2", None);
    no_items.as_object_mut().unwrap().remove("Ordered_Items");
    let mut no_subject = order("b-3", None);
    no_subject.as_object_mut().unwrap().remove("Subject");
    let (status, body) = post(
        &z,
        "/crm/v8/Sales_Orders",
        &t,
        json!({"data": [no_items, no_subject, order("b-4", Some("123")), order("b-5", None)]}),
    )
    .await;
    assert_eq!(status, 207);
    let d = body["data"].as_array().unwrap();
    assert_eq!(d[0]["details"]["api_name"], "Ordered_Items");
    assert_eq!(d[1]["details"]["api_name"], "Subject");
    assert_eq!(d[2]["code"], "INVALID_DATA");
    assert_eq!(d[2]["details"]["api_name"], "Contact_Name");
    assert_eq!(d[3]["code"], "SUCCESS");
    assert_eq!(z.state().sales_orders.len(), 2);
}

#[tokio::test]
async fn configurable_unique_field() {
    let z = ZohoSandbox::start(ZohoOptions {
        sales_order_unique_field: "Outbox_Key".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let t = token(&z).await;
    let mut o = order("b-1", None);
    o["Outbox_Key"] = json!("k-1");
    assert_eq!(
        post(&z, "/crm/v8/Sales_Orders", &t, json!({"data": [o.clone()]}))
            .await
            .0,
        201
    );
    let (status, body) = post(&z, "/crm/v8/Sales_Orders", &t, json!({"data": [o]})).await;
    assert_eq!(status, 400);
    assert_eq!(body["data"][0]["details"]["api_name"], "Outbox_Key");
}

#[tokio::test]
async fn fault_knobs_429_5xx_concurrency_and_create_then_timeout() {
    let z = start().await;
    let t = token(&z).await;
    let rec = json!({"data": [{"Last_Name": "A"}]});

    z.fail_next_with_429(1);
    let (status, body) = post(&z, "/crm/v8/Contacts/upsert", &t, rec.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("TOO_MANY_REQUESTS"))
    );
    z.fail_next_with_5xx(1, 503);
    assert_eq!(
        post(&z, "/crm/v8/Contacts/upsert", &t, rec.clone()).await.0,
        503
    );
    assert_eq!(
        post(&z, "/crm/v8/Contacts/upsert", &t, rec.clone()).await.0,
        200
    );

    z.set_latency(Duration::from_millis(150));
    z.set_concurrency_limit(Some(2));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        set.spawn(post_to(
            z.base_url(),
            "/crm/v8/Contacts/upsert",
            t.clone(),
            rec.clone(),
        ));
    }
    let statuses: Vec<u16> = set.join_all().await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert!(z.state().max_in_flight >= 3);
    z.set_latency(Duration::ZERO);
    z.set_concurrency_limit(None);

    z.time_out_after_next_creates(1, Duration::from_secs(5));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .post(format!("{}/crm/v8/Sales_Orders", z.base_url()))
        .header("Authorization", format!("Zoho-oauthtoken {t}"))
        .json(&json!({"data": [order("b-9", None)]}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    // Created despite the timeout: the retry sees DUPLICATE_DATA.
    assert_eq!(z.state().sales_orders.len(), 1);
    let (status, body) = post(
        &z,
        "/crm/v8/Sales_Orders",
        &t,
        json!({"data": [order("b-9", None)]}),
    )
    .await;
    assert_eq!(
        (status, body["data"][0]["code"].as_str()),
        (400, Some("DUPLICATE_DATA"))
    );
}

#[tokio::test]
async fn inspection_and_faults_endpoints_over_http() {
    let z = start().await;
    let t = token(&z).await;
    post(
        &z,
        "/crm/v8/Contacts/upsert",
        &t,
        json!({"data": [{"Last_Name": "A", "Email": "a@x.io"}]}),
    )
    .await;
    let client = reqwest::Client::new();
    let st: SandboxState = client
        .get(format!("{}/_sandbox/state", z.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st.contacts.len(), 1);
    assert_eq!(st.token_refreshes, 1);
    assert_eq!(st.calls_to(ENDPOINT_CONTACTS_UPSERT), 1);

    let resp = client
        .post(format!("{}/_sandbox/faults", z.base_url()))
        .json(&json!({"fail_next_429": 2, "latency": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(z.faults().fail_next_429, 2);
    assert_eq!(z.faults().latency, Duration::from_millis(5));
}

async fn put(z: &ZohoSandbox, path: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .put(format!("{}{path}", z.base_url()))
        .header("Authorization", format!("Zoho-oauthtoken {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn records_are_updated_by_id_and_orders_upserted_on_the_unique_field() {
    let z = start().await;
    let t = token(&z).await;
    let (_, c) = post(
        &z,
        "/crm/v8/Contacts/upsert",
        &t,
        json!({"data": [{"Last_Name": "Boyle", "Email": "p@example.com"}]}),
    )
    .await;
    let contact = c["data"][0]["details"]["id"].as_str().unwrap().to_string();

    // By id: the same contact changes; an unknown id is refused per record.
    let (status, body) = put(
        &z,
        "/crm/v8/Contacts",
        &t,
        json!({"data": [{"id": contact, "Email": "new@example.com"}, {"id": "42", "Email": "x"}]}),
    )
    .await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(body["data"][0]["details"]["id"], contact.as_str());
    assert_eq!(body["data"][1]["code"], "INVALID_DATA");
    let s = z.state();
    assert_eq!(s.contacts.len(), 1);
    assert_eq!(s.contacts[0].fields["Email"], "new@example.com");
    assert_eq!(
        s.contacts[0].fields["Last_Name"], "Boyle",
        "left-out fields stay"
    );
    assert_eq!(s.calls_to(ENDPOINT_CONTACTS_UPDATE), 1);

    // Upsert on ERP_Booking_Id: inserted once, then updated in place.
    let upsert = |price: f64| {
        let mut o = order("b-9", Some(&contact));
        o["Ordered_Items"][0]["List_Price"] = json!(price);
        json!({"data": [o], "duplicate_check_fields": ["ERP_Booking_Id"]})
    };
    let (_, first) = post(&z, "/crm/v8/Sales_Orders/upsert", &t, upsert(100.0)).await;
    assert_eq!(first["data"][0]["action"], "insert", "{first}");
    let (_, second) = post(&z, "/crm/v8/Sales_Orders/upsert", &t, upsert(150.0)).await;
    assert_eq!(second["data"][0]["action"], "update", "{second}");
    assert_eq!(
        second["data"][0]["details"]["id"],
        first["data"][0]["details"]["id"]
    );
    let id = first["data"][0]["details"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = put(
        &z,
        "/crm/v8/Sales_Orders",
        &t,
        json!({"data": [{"id": id, "Status": "Cancelled"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let s = z.state();
    assert_eq!(s.sales_orders.len(), 1);
    let o = &s.sales_orders[0];
    assert_eq!(o.fields["Ordered_Items"][0]["List_Price"], 150.0);
    assert_eq!(o.fields["Status"], "Cancelled");
    assert_eq!(o.writes, 3);
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS_UPSERT), 2);
    assert_eq!(s.calls_to(ENDPOINT_SALES_ORDERS_UPDATE), 1);
}
