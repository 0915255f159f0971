//! The production swap (seed `001`, steps 1–9) in one transaction.
//!
//! Every value was mapped before staging, so this is set-based SQL over the
//! staging rows of one run. Production rows whose Kommo `updated_at` is newer
//! than the snapshot (a webhook applied a later change while the run was
//! fetching) are left alone: the snapshot must not roll them back.

use serde_json::json;
use uuid::Uuid;

use super::{
    runs::{finish, RunStatus},
    settings::RefreshSettings,
    RefreshError,
};

/// What the swap wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapCounts {
    /// Staged leads (every status but 143, in the year).
    pub leads: i64,
    /// Staged contacts (distinct main contacts).
    pub contacts: i64,
    /// Distinct booking–vehicle links of bookable leads.
    pub vehicles: i64,
    /// Leads that became active bookings.
    pub bookings: i64,
    /// Leads in excluded statuses: in `sales_leads`, not in `bookings`.
    pub excluded: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapOutcome {
    Succeeded(SwapCounts),
    /// Nothing was staged; production is untouched and the run failed.
    NoLeads,
    /// Too few leads against the last successful run; production is untouched.
    NeedsReview {
        leads: i64,
        previous: i64,
    },
}

/// Pre-checks, then replaces the Kommo-derived rows and marks the run
/// `succeeded` in the same transaction. Any error rolls everything back.
pub async fn swap(
    client: &mut tokio_postgres::Client,
    run_id: Uuid,
    settings: &RefreshSettings,
) -> Result<SwapOutcome, RefreshError> {
    let tx = client.transaction().await?;
    let run = tx
        .query_opt(
            "SELECT year, started_at FROM kommo_import_runs WHERE id = $1 FOR UPDATE",
            &[&run_id],
        )
        .await?
        .ok_or(RefreshError::UnknownRun(run_id))?;
    let year: i32 = run.get(0);
    let started_at: chrono::DateTime<chrono::Utc> = run.get(1);

    // 1. Pre-checks.
    let counts = tx
        .query_one(
            "SELECT (SELECT count(*) FROM stg_kommo_leads WHERE run_id = $1),
                    (SELECT count(*) FROM stg_kommo_leads WHERE run_id = $1 AND excluded),
                    (SELECT count(*) FROM stg_kommo_contacts WHERE run_id = $1),
                    (SELECT count(*) FROM (SELECT DISTINCT v.lead_id, v.vehicle_enum_id
                                             FROM stg_kommo_booking_vehicles v
                                             JOIN stg_kommo_leads s ON s.run_id = v.run_id AND s.lead_id = v.lead_id
                                            WHERE v.run_id = $1 AND NOT s.excluded) x)",
            &[&run_id],
        )
        .await?;
    let leads: i64 = counts.get(0);
    let excluded: i64 = counts.get(1);
    let contacts: i64 = counts.get(2);
    let vehicles: i64 = counts.get(3);
    let previous: Option<i32> = tx
        .query_opt(
            "SELECT leads_count FROM kommo_import_runs
              WHERE status = 'succeeded' AND year = $1 AND id <> $2
              ORDER BY finished_at DESC NULLS LAST LIMIT 1",
            &[&year, &run_id],
        )
        .await?
        .map(|r| r.get(0));
    tx.commit().await?;

    let progress = json!({"leads": leads, "contacts": contacts, "vehicles": vehicles});
    tracing::info!(%run_id, %progress, previous, "swap pre-checks");
    if leads == 0 {
        finish(
            &*client,
            run_id,
            RunStatus::Failed,
            Some("Kommo returned no leads for the year; production was left unchanged"),
            None,
        )
        .await?;
        return Ok(SwapOutcome::NoLeads);
    }
    if let Some(prev) = previous.filter(|p| *p > 0).map(i64::from) {
        if (leads as f64) < (prev as f64) * (1.0 - settings.max_drop) {
            let msg = format!(
                "{leads} leads is a drop of more than {:.0}% from the {prev} of the last successful run; \
                 production was left unchanged",
                settings.max_drop * 100.0
            );
            client
                .execute(
                    "UPDATE kommo_import_runs SET leads_count = $2, contacts_count = $3,
                            vehicles_count = $4, last_success_count = $5 WHERE id = $1",
                    &[
                        &run_id,
                        &(leads as i32),
                        &(contacts as i32),
                        &(vehicles as i32),
                        &(prev as i32),
                    ],
                )
                .await?;
            finish(&*client, run_id, RunStatus::NeedsReview, Some(&msg), None).await?;
            return Ok(SwapOutcome::NeedsReview {
                leads,
                previous: prev,
            });
        }
    }

    let tx = client.transaction().await?;
    // Re-lock the run: nothing may close it between the checks and the swap.
    tx.execute(
        "SELECT 1 FROM kommo_import_runs WHERE id = $1 FOR UPDATE",
        &[&run_id],
    )
    .await?;
    // 2. No outbox writes from this transaction (see migration V4).
    tx.execute(
        "SELECT set_config('integrations.outbox_suppressed', 'on', true)",
        &[],
    )
    .await?;

    // 3. Soft-delete current Kommo data, except rows changed in Kommo after
    //    the snapshot began.
    tx.execute(
        "UPDATE bookings b SET is_active = false, updated_at = now()
          WHERE b.channel = 'Kommo' AND b.is_active
            AND (b.kommo_updated_at IS NULL OR b.kommo_updated_at < $2)
            AND NOT EXISTS (SELECT 1 FROM stg_kommo_leads s
                             WHERE s.run_id = $1 AND b.source_payload_id = 'kommo:' || s.lead_id
                               AND b.kommo_updated_at > s.updated_at)",
        &[&run_id, &started_at],
    )
    .await?;
    tx.execute(
        "UPDATE sales_leads l SET archived_at = now(), updated_at = now()
          WHERE l.source = 'Kommo' AND l.archived_at IS NULL
            AND (l.kommo_updated_at IS NULL OR l.kommo_updated_at < $2)
            AND NOT EXISTS (SELECT 1 FROM stg_kommo_leads s
                             WHERE s.run_id = $1 AND l.kommo_lead_id = s.lead_id
                               AND l.kommo_updated_at > s.updated_at)",
        &[&run_id, &started_at],
    )
    .await?;

    // 4. Clients. Kommo's empty values do not erase what staff entered.
    tx.execute(
        "INSERT INTO clients (kommo_contact_id, full_name, first_name, last_name, email, phone,
                              phone_normalized, kommo_updated_at)
         SELECT contact_id, coalesce(full_name, ''), first_name, last_name, email, phone,
                phone_normalized, updated_at
           FROM stg_kommo_contacts WHERE run_id = $1
         ON CONFLICT (kommo_contact_id) DO UPDATE SET
                full_name = CASE WHEN EXCLUDED.full_name = '' THEN clients.full_name ELSE EXCLUDED.full_name END,
                first_name = coalesce(EXCLUDED.first_name, clients.first_name),
                last_name = coalesce(EXCLUDED.last_name, clients.last_name),
                email = coalesce(EXCLUDED.email, clients.email),
                phone = coalesce(EXCLUDED.phone, clients.phone),
                phone_normalized = coalesce(EXCLUDED.phone_normalized, clients.phone_normalized),
                kommo_updated_at = EXCLUDED.kommo_updated_at,
                updated_at = now()
          WHERE clients.kommo_updated_at IS NULL OR EXCLUDED.kommo_updated_at IS NULL
             OR clients.kommo_updated_at <= EXCLUDED.kommo_updated_at",
        &[&run_id],
    )
    .await?;

    // 5. Sales leads: every staged lead, excluded statuses included.
    tx.execute(
        "INSERT INTO sales_leads (lead_code, kommo_lead_id, client_id, name, stage_id, pipeline_id,
                                  value_amount, owner_id, expected_close_at, source, lead_source,
                                  archived_at, kommo_updated_at, created_at, updated_at)
         SELECT s.lead_id::text, s.lead_id, c.id, s.name, s.status_id, s.pipeline_id,
                s.price, s.owner_id, coalesce(s.closed_at, s.end_at), 'Kommo', s.lead_source,
                NULL, s.updated_at, coalesce(s.created_at, now()), now()
           FROM stg_kommo_leads s
           LEFT JOIN clients c ON c.kommo_contact_id = s.contact_id
          WHERE s.run_id = $1
         ON CONFLICT (lead_code) DO UPDATE SET
                kommo_lead_id = EXCLUDED.kommo_lead_id,
                client_id = EXCLUDED.client_id,
                name = EXCLUDED.name,
                stage_id = EXCLUDED.stage_id,
                pipeline_id = EXCLUDED.pipeline_id,
                value_amount = EXCLUDED.value_amount,
                owner_id = EXCLUDED.owner_id,
                expected_close_at = EXCLUDED.expected_close_at,
                source = 'Kommo',
                lead_source = EXCLUDED.lead_source,
                archived_at = NULL,
                kommo_updated_at = EXCLUDED.kommo_updated_at,
                updated_at = now()
          WHERE sales_leads.kommo_updated_at IS NULL
             OR sales_leads.kommo_updated_at <= EXCLUDED.kommo_updated_at",
        &[&run_id],
    )
    .await?;

    // 7a. Vehicles first, so bookings can point at them.
    tx.execute(
        "INSERT INTO vehicles (kommo_vehicle_id, name)
         SELECT DISTINCT ON (vehicle_enum_id) vehicle_enum_id,
                coalesce(nullif(vehicle_name, ''), 'Kommo vehicle ' || vehicle_enum_id)
           FROM stg_kommo_booking_vehicles WHERE run_id = $1
          ORDER BY vehicle_enum_id, vehicle_name NULLS LAST
         ON CONFLICT (kommo_vehicle_id) DO NOTHING",
        &[&run_id],
    )
    .await?;

    // 6. Bookings: bookable leads only.
    tx.execute(
        "INSERT INTO bookings (source_payload_id, channel, created_by, owner_id, client_id,
                               kommo_lead_id, kommo_pipeline_id, kommo_status_id, status, source,
                               title, start_at, end_at, vehicle_id, is_active, total_amount,
                               kommo_updated_at, created_at, updated_at)
         SELECT 'kommo:' || s.lead_id, 'Kommo', 'system-kommo', s.owner_id, c.id,
                s.lead_id, s.pipeline_id, s.status_id, s.booking_status, s.lead_source,
                nullif(s.name, ''), s.start_at, s.end_at, v.id, true, s.price,
                s.updated_at, coalesce(s.created_at, now()), now()
           FROM stg_kommo_leads s
           LEFT JOIN clients c ON c.kommo_contact_id = s.contact_id
           LEFT JOIN vehicles v ON v.kommo_vehicle_id = s.vehicle_enum_id
          WHERE s.run_id = $1 AND NOT s.excluded
         ON CONFLICT (source_payload_id) DO UPDATE SET
                owner_id = EXCLUDED.owner_id,
                client_id = EXCLUDED.client_id,
                kommo_lead_id = EXCLUDED.kommo_lead_id,
                kommo_pipeline_id = EXCLUDED.kommo_pipeline_id,
                kommo_status_id = EXCLUDED.kommo_status_id,
                status = EXCLUDED.status,
                source = EXCLUDED.source,
                title = EXCLUDED.title,
                start_at = EXCLUDED.start_at,
                end_at = EXCLUDED.end_at,
                vehicle_id = EXCLUDED.vehicle_id,
                is_active = true,
                total_amount = EXCLUDED.total_amount,
                kommo_updated_at = EXCLUDED.kommo_updated_at,
                updated_at = now()
          WHERE bookings.channel = 'Kommo'
            AND (bookings.kommo_updated_at IS NULL
                 OR bookings.kommo_updated_at <= EXCLUDED.kommo_updated_at)",
        &[&run_id],
    )
    .await?;

    // 7b. Link vehicles; the lead's vehicle is the booking's primary one.
    tx.execute(
        "WITH links AS (
            SELECT b.id AS booking_id, v.id AS vehicle_id
              FROM stg_kommo_booking_vehicles sv
              JOIN stg_kommo_leads s ON s.run_id = sv.run_id AND s.lead_id = sv.lead_id AND NOT s.excluded
              JOIN bookings b ON b.source_payload_id = 'kommo:' || sv.lead_id AND b.channel = 'Kommo'
              JOIN vehicles v ON v.kommo_vehicle_id = sv.vehicle_enum_id
             WHERE sv.run_id = $1 AND sv.is_primary)
         UPDATE booking_vehicles bv SET \"primary\" = false
           FROM links l
          WHERE bv.booking_id = l.booking_id AND bv.\"primary\" AND bv.vehicle_id <> l.vehicle_id",
        &[&run_id],
    )
    .await?;
    tx.execute(
        "INSERT INTO booking_vehicles (booking_id, vehicle_id, \"primary\")
         SELECT DISTINCT ON (b.id, v.id) b.id, v.id, sv.is_primary
           FROM stg_kommo_booking_vehicles sv
           JOIN stg_kommo_leads s ON s.run_id = sv.run_id AND s.lead_id = sv.lead_id AND NOT s.excluded
           JOIN bookings b ON b.source_payload_id = 'kommo:' || sv.lead_id AND b.channel = 'Kommo'
           JOIN vehicles v ON v.kommo_vehicle_id = sv.vehicle_enum_id
          WHERE sv.run_id = $1
          ORDER BY b.id, v.id, sv.is_primary DESC
         ON CONFLICT (booking_id, vehicle_id) DO UPDATE SET \"primary\" = EXCLUDED.\"primary\"",
        &[&run_id],
    )
    .await?;

    // 8–9. Record the outcome with the data, so `succeeded` never shows
    //      for a swap that did not commit.
    let bookings = leads - excluded;
    tx.execute(
        "UPDATE kommo_import_runs
            SET status = 'succeeded', phase = 'succeeded', finished_at = now(), updated_at = now(),
                leads_count = $2, contacts_count = $3, vehicles_count = $4,
                last_success_count = $5, error = NULL
          WHERE id = $1",
        &[
            &run_id,
            &(leads as i32),
            &(contacts as i32),
            &(vehicles as i32),
            &previous,
        ],
    )
    .await?;
    tx.commit().await?;
    let counts = SwapCounts {
        leads,
        contacts,
        vehicles,
        bookings,
        excluded,
    };
    tracing::info!(%run_id, ?counts, "full refresh swapped into production");
    Ok(SwapOutcome::Succeeded(counts))
}
