//! The Zoho work of a swapped-in snapshot. The swap writes production with
//! the outbox suppressed, so a refresh cannot flood Zoho with duplicate
//! work; right after it commits, one bounded reconcile queues exactly what
//! Zoho is behind on (new bookings, changed ones, soft-deleted ones whose
//! orders must be cancelled) and nothing for rows in step. With
//! `enableZohoLive` off it is skipped: the work would only be stubbed, and
//! going live runs a reconcile anyway.

use std::time::Duration;

use crate::{
    outbox::{reconcile_live, ReconcileLimits},
    platform::{deadline::Deadline, flags::FeatureFlags},
};

/// How long the worker's reconcile after a swap (its own, or an approved
/// run's) may take; the daily reconcile finishes a pass this one leaves open.
const BUDGET: Duration = Duration::from_secs(60);

/// Reconciles for at most [`BUDGET`], and never past the invocation's
/// `deadline`, after a successful swap. A failure is logged, not raised: the
/// swap has committed, and the daily reconcile catches up.
pub async fn after_swap(
    client: &mut tokio_postgres::Client,
    flags: &FeatureFlags,
    deadline: Deadline,
) {
    let deadline = deadline.at_most(BUDGET);
    if let Err(e) = reconcile_live(client, flags, deadline, ReconcileLimits::default()).await {
        tracing::warn!(error = %e, "zoho reconcile after the swap failed; the daily one catches up");
    }
}
