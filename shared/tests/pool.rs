//! The pool hands out working connections without a round trip per checkout.

use std::time::Duration;

async fn backend_pid(pool: &shared::platform::db::DbPool) -> i32 {
    let c = pool.get().await.expect("a connection");
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test]
async fn a_connection_handed_back_a_moment_ago_is_reused() {
    let db = testkit::TestDb::new().await;
    let pool = db.pool();
    let first = backend_pid(&pool).await;
    assert_eq!(backend_pid(&pool).await, first);
}

#[tokio::test]
async fn a_connection_closed_by_the_server_while_idle_is_replaced() {
    let db = testkit::TestDb::new().await;
    let pool = db.pool();
    let first = backend_pid(&pool).await;
    // What a container finds after a freeze: the server has dropped its session.
    db.client()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let c = pool.get().await.expect("a fresh connection");
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the connection handed out works")
        .get(0);
    assert_ne!(pid, first);
}
