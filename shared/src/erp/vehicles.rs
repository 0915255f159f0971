//! `vehicles`: the fleet, keyed for Kommo by the catalog enum option
//! (`kommo_vehicle_id`) a lead picks its vehicle with.

use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::platform::db::DbError;

/// The start of both inserts: a vehicle is keyed by its Kommo enum option.
macro_rules! insert_kommo_vehicle {
    () => {
        "INSERT INTO vehicles (kommo_vehicle_id, name) "
    };
}

/// The vehicle of a lead's enum option, created on first sight. A non-empty
/// name from Kommo renames it.
pub async fn upsert_kommo(
    tx: &Transaction<'_>,
    kommo_vehicle_id: i64,
    name: &str,
) -> Result<Uuid, DbError> {
    Ok(tx
        .query_one(
            &tx.prepare_cached(concat!(
                insert_kommo_vehicle!(),
                "VALUES ($1, $2)
                 ON CONFLICT (kommo_vehicle_id) DO UPDATE
                    SET name = CASE WHEN EXCLUDED.name = '' THEN vehicles.name ELSE EXCLUDED.name END,
                        updated_at = CASE WHEN vehicles.name = EXCLUDED.name OR EXCLUDED.name = ''
                                          THEN vehicles.updated_at ELSE now() END
                 RETURNING id"
            ))
            .await?,
            &[&kommo_vehicle_id, &name],
        )
        .await?
        .get(0))
}

/// Whether a vehicle is active; `None` when there is no such vehicle.
pub async fn is_active(
    tx: &tokio_postgres::Transaction<'_>,
    id: Uuid,
) -> Result<Option<bool>, DbError> {
    Ok(tx
        .query_opt("SELECT is_active FROM vehicles WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0)))
}

/// The run's (`$1`) vehicles that do not exist yet, so bookings can point
/// at them. A full refresh does not rename existing vehicles.
pub(super) const INSERT_STAGED: &str = concat!(
    insert_kommo_vehicle!(),
    "SELECT DISTINCT ON (vehicle_enum_id) vehicle_enum_id,
            coalesce(nullif(vehicle_name, ''), 'Kommo vehicle ' || vehicle_enum_id)
       FROM stg_kommo_booking_vehicles WHERE run_id = $1
      ORDER BY vehicle_enum_id, vehicle_name NULLS LAST
     ON CONFLICT (kommo_vehicle_id) DO NOTHING"
);
