//! The account's statuses in `kommo_status_map`: read from Kommo at the
//! start of each run with their labels, so an operator sees every stage and
//! can map it; a status nobody mapped is counted on the run that met it.
//!
//! The refresh never changes `booking_status` or `excluded`: those are the
//! operator's. A new status arrives with the defaults every unknown status
//! already had (`requested`, not excluded) and `mapped_at` NULL.

use std::collections::BTreeMap;

use serde_json::Value;
use uuid::Uuid;

use super::RefreshError;
use crate::kommo::Pipeline;

/// Writes the pipelines' statuses into the map; returns how many statuses
/// Kommo listed. Labels and pipelines follow Kommo; the mapping stays.
pub async fn record_pipelines(
    client: &tokio_postgres::Client,
    pipelines: &[Pipeline],
) -> Result<usize, RefreshError> {
    // 142 and 143 are in every pipeline; the map holds one row per status.
    let mut statuses: BTreeMap<i64, (&str, i64, &str)> = BTreeMap::new();
    for p in pipelines {
        for st in &p.embedded.statuses {
            statuses
                .entry(st.id)
                .or_insert((st.name.as_str(), p.id, p.name.as_str()));
        }
    }
    let ids: Vec<i64> = statuses.keys().copied().collect();
    let labels: Vec<&str> = statuses.values().map(|s| s.0).collect();
    let pipeline_ids: Vec<i64> = statuses.values().map(|s| s.1).collect();
    let pipeline_names: Vec<&str> = statuses.values().map(|s| s.2).collect();
    client
        .execute(
            "INSERT INTO kommo_status_map (status_id, label, pipeline_id, pipeline_name, mapped_at)
             SELECT u.id, u.label, u.pipeline_id, u.pipeline_name, NULL
               FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[])
                    AS u(id, label, pipeline_id, pipeline_name)
             ON CONFLICT (status_id) DO UPDATE
                SET label = EXCLUDED.label, pipeline_id = EXCLUDED.pipeline_id,
                    pipeline_name = EXCLUDED.pipeline_name, updated_at = now()
              WHERE (kommo_status_map.label, kommo_status_map.pipeline_id, kommo_status_map.pipeline_name)
                    IS DISTINCT FROM (EXCLUDED.label, EXCLUDED.pipeline_id, EXCLUDED.pipeline_name)",
            &[&ids, &labels, &pipeline_ids, &pipeline_names],
        )
        .await?;
    Ok(ids.len())
}

/// Counts the run's staged leads in statuses nobody has mapped (unknown to
/// the map, or listed by Kommo and never mapped) and records them on the
/// run, named. Returns the count.
pub async fn record_unmapped(
    client: &impl tokio_postgres::GenericClient,
    run_id: Uuid,
) -> Result<i32, RefreshError> {
    let row = client
        .query_one(
            "WITH u AS (
                 SELECT s.status_id, s.pipeline_id, min(m.label) AS label, count(*) AS leads
                   FROM stg_kommo_leads s
                   LEFT JOIN kommo_status_map m ON m.status_id = s.status_id
                  WHERE s.run_id = $1 AND (m.status_id IS NULL OR m.mapped_at IS NULL)
                  GROUP BY s.status_id, s.pipeline_id)
             UPDATE kommo_import_runs
                SET unmapped_leads = coalesce((SELECT sum(leads) FROM u), 0)::int,
                    unmapped_statuses = coalesce(
                        (SELECT jsonb_agg(jsonb_build_object('statusId', status_id, 'pipelineId', pipeline_id,
                                                             'label', label, 'leads', leads)
                                          ORDER BY leads DESC, status_id)
                           FROM u), '[]'::jsonb)
              WHERE id = $1
             RETURNING unmapped_leads, unmapped_statuses",
            &[&run_id],
        )
        .await?;
    let (count, named): (i32, Value) = (row.get(0), row.get(1));
    if count > 0 {
        tracing::warn!(%run_id, leads = count, statuses = %named, "leads in statuses nobody has mapped (kommo_status_map)");
    }
    Ok(count)
}
