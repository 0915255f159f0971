//! Confirming the leads the swap would deactivate: offset paging over live
//! data skips a lead when an earlier one is deleted between pages, so the
//! active leads of the scope missing from staging are asked for by id
//! (`filter[id][]`, through the account's shared budget) and the ones Kommo
//! still has are kept.

use std::ops::ControlFlow;

use uuid::Uuid;

use super::{fetch::Stop, JobOutcome, Worker};
use crate::refresh::{scope, RefreshError};

impl Worker {
    /// Records the leads to keep on the run; `Break` when the run ended
    /// (Kommo failed, or the run was closed meanwhile).
    pub(super) async fn confirm_missing(
        &self,
        client: &mut tokio_postgres::Client,
        run_id: Uuid,
    ) -> Result<ControlFlow<JobOutcome>, RefreshError> {
        let confirmed = self.kept_by_kommo(client, run_id).await;
        let kept = match confirmed {
            Ok(kept) => kept,
            Err(stop) => {
                let outcome = self
                    .end_early(client, run_id, stop, |_, error| {
                        format!(
                            "Kommo failed while confirming the leads missing from staging: {error}; \
                             production was left unchanged and staging is kept"
                        )
                    })
                    .await?;
                return Ok(ControlFlow::Break(outcome));
            }
        };
        if !scope::keep(&*client, run_id, &kept).await? {
            return Ok(ControlFlow::Break(JobOutcome::Skipped));
        }
        Ok(ControlFlow::Continue(()))
    }

    async fn kept_by_kommo(
        &self,
        client: &tokio_postgres::Client,
        run_id: Uuid,
    ) -> Result<Vec<i64>, Stop> {
        let scope = scope::of_run(client, run_id).await?;
        let missing = scope::missing_from_staging(client, run_id, &scope).await?;
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let found = self
            .kommo
            .leads_by_ids(&missing)
            .await
            .map_err(|error| Stop::Kommo { page: 0, error })?;
        let kept = scope::still_in_scope(&found, &scope);
        tracing::info!(%run_id, missing = missing.len(), kept = kept.len(), "leads missing from staging confirmed with Kommo");
        Ok(kept)
    }
}
