//! `sales_leads`: the snapshot of every Kommo lead, excluded statuses
//! included, keyed by `lead_code` (the lead id as text).

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::execute_cached;
use crate::{kommo::MappedLead, platform::db::DbError};

/// The columns a Kommo lead writes, per row and per run.
macro_rules! lead_columns {
    () => {
        "lead_code, kommo_lead_id, client_id, name, stage_id, pipeline_id, value_amount, \
         owner_id, expected_close_at, source, lead_source, archived_at, kommo_updated_at, \
         kommo_created_at"
    };
}

/// What a newer snapshot of a lead overwrites, per row and per run; the
/// client link differs (a webhook without a contact keeps the stored one).
macro_rules! lead_snapshot_set {
    () => {
        "(kommo_lead_id, name, stage_id, pipeline_id, value_amount, owner_id,
          expected_close_at, lead_source, kommo_updated_at, kommo_created_at)
       = (EXCLUDED.kommo_lead_id, EXCLUDED.name, EXCLUDED.stage_id, EXCLUDED.pipeline_id,
          EXCLUDED.value_amount, EXCLUDED.owner_id, EXCLUDED.expected_close_at,
          EXCLUDED.lead_source, EXCLUDED.kommo_updated_at, EXCLUDED.kommo_created_at),
         archived_at = NULL,
         updated_at = now()"
    };
}

/// The stored `kommo_updated_at` of a lead; `None` when it is not stored.
pub async fn kommo_updated_at(
    tx: &Transaction<'_>,
    lead_id: i64,
) -> Result<Option<Option<DateTime<Utc>>>, DbError> {
    Ok(tx
        .query_opt(
            &tx.prepare_cached("SELECT kommo_updated_at FROM sales_leads WHERE kommo_lead_id = $1")
                .await?,
            &[&lead_id],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Writes a lead's snapshot; the caller has checked it is not stale.
pub async fn upsert_from_lead(
    tx: &Transaction<'_>,
    lead: &MappedLead,
    client_id: Option<Uuid>,
) -> Result<(), DbError> {
    execute_cached(
        tx,
        concat!(
            "INSERT INTO sales_leads (",
            lead_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7::bigint::numeric, $8, $9, 'Kommo', $10, NULL, $11,
                       $12)
             ON CONFLICT (lead_code) DO UPDATE SET ",
            lead_snapshot_set!(),
            ", client_id = coalesce(EXCLUDED.client_id, sales_leads.client_id)"
        ),
        &[
            &lead.lead_code(),
            &lead.lead_id,
            &client_id,
            &lead.name,
            &lead.status_id,
            &lead.pipeline_id,
            &lead.price,
            &lead.owner_staff_id,
            &lead.closed_at.or(lead.start_at),
            &lead.source,
            &lead.kommo_updated_at,
            &lead.created_at,
        ],
    )
    .await?;
    Ok(())
}

/// A lead deleted in Kommo: its snapshot is archived. Returns the rows changed.
pub async fn archive_deleted_lead(tx: &Transaction<'_>, lead_id: i64) -> Result<u64, DbError> {
    execute_cached(
        tx,
        "UPDATE sales_leads SET archived_at = now(), updated_at = now()
          WHERE kommo_lead_id = $1 AND archived_at IS NULL",
        &[&lead_id],
    )
    .await
}

/// Archives the Kommo leads of before the run (`$1`, started at `$2`)
/// inside its scope (created `$3 ..= $4`), but for the leads Kommo still has
/// (`$5`).
pub(super) const ARCHIVE_STALE: &str = concat!(
    "UPDATE sales_leads l SET archived_at = now(), updated_at = now()
      WHERE l.source = 'Kommo' AND l.archived_at IS NULL AND ",
    in_scope!("l"),
    " AND ",
    before_run!("l", "l.kommo_lead_id = s.lead_id")
);

/// Records a Kommo delete, so a full refresh that fetched the lead before
/// it does not bring it back.
pub async fn record_deletion(tx: &Transaction<'_>, lead_id: i64) -> Result<(), DbError> {
    execute_cached(
        tx,
        "INSERT INTO kommo_lead_deletions (lead_id, deleted_at) VALUES ($1, now())
         ON CONFLICT (lead_id) DO UPDATE SET deleted_at = now()",
        &[&lead_id],
    )
    .await?;
    Ok(())
}

/// Every staged lead of the run (`$1`); clients are written first.
pub(super) const UPSERT_STAGED: &str = concat!(
    "INSERT INTO sales_leads (",
    lead_columns!(),
    ", created_at, updated_at)
     SELECT s.lead_id::text, s.lead_id, c.id, s.name, s.status_id, s.pipeline_id,
            s.price, s.owner_id, coalesce(s.closed_at, s.end_at), 'Kommo', s.lead_source,
            NULL, s.updated_at, s.created_at, coalesce(s.created_at, now()), now()
       FROM stg_kommo_leads s
       LEFT JOIN clients c ON c.kommo_contact_id = s.contact_id
      WHERE s.run_id = $1
     ON CONFLICT (lead_code) DO UPDATE SET ",
    lead_snapshot_set!(),
    ", client_id = EXCLUDED.client_id, source = 'Kommo'
      WHERE sales_leads.kommo_updated_at IS NULL
         OR sales_leads.kommo_updated_at <= EXCLUDED.kommo_updated_at"
);
