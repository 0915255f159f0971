//! The sample events in `events/` parse, carry a token valid for the dev
//! staff JWT key, and do what their names say.

mod common;

use std::sync::Arc;

use aws_lambda_events::{apigw::ApiGatewayV2httpRequest, event::sqs::SqsEvent};
use common::*;
use shared::refresh::JobMessage;
use testkit::{refresh::MemoryQueue, TestDb};

fn event(name: &str) -> String {
    let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn start_status_and_list_events_work_against_the_dev_key() {
    let db = TestDb::new().await;
    db.set_flag("enableKommoLive", true).await;
    let queue = Arc::new(MemoryQueue::default());
    let app = http_app(&db, queue.clone());

    let start: ApiGatewayV2httpRequest =
        serde_json::from_str(&event("full-refresh-start.json")).unwrap();
    let resp = app.handle(start).await;
    assert_eq!(resp.status_code, 202, "{:?}", resp.body);
    let run_id = body_json(&resp)["runId"].as_str().unwrap().to_string();
    let c = db.client().await;
    let (by, year): (Option<String>, i32) = c
        .query_one(
            "SELECT triggered_by, year FROM kommo_import_runs WHERE id = $1::text::uuid",
            &[&run_id],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((by.as_deref(), year), (Some("staff-dev-1"), 2025));

    let status: ApiGatewayV2httpRequest =
        serde_json::from_str(&event("full-refresh-status.json")).unwrap();
    assert_eq!(
        app.handle(status).await.status_code,
        404,
        "the sample run id is not in this database"
    );
    let list: ApiGatewayV2httpRequest =
        serde_json::from_str(&event("full-refresh-list.json")).unwrap();
    let resp = app.handle(list).await;
    assert_eq!(resp.status_code, 200);
    assert_eq!(body_json(&resp)["runs"][0]["runId"], run_id.as_str());
}

#[test]
fn the_job_event_carries_a_valid_job_message() {
    let ev: SqsEvent = serde_json::from_str(&event("full-refresh-worker-sqs.json")).unwrap();
    assert_eq!(ev.records.len(), 1);
    let job = JobMessage::parse(ev.records[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(job.invocation, 0);
}
