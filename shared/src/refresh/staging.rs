//! The staging tables: one page of mapped rows at a time, loaded with binary
//! `COPY` so memory stays at one page whatever the account's size.
//!
//! A page and the run's checkpoint are written in the same transaction by
//! the worker, so staging always matches the checkpoint: a page is either
//! staged and counted, or neither.
//!
//! The `COPY` stream is framed here rather than with tokio-postgres'
//! `BinaryCopyInWriter`, which hands the connection a flush every 4 KB:
//! with 1 KB of raw JSON per lead that was a socket write and a task wake-up
//! every three rows, 25% of the load's time (docs/benchmarks.md, run 4).
//! The values themselves are still encoded by tokio-postgres' `ToSql`.

use std::error::Error;
use std::pin::pin;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::SinkExt;
use serde_json::Value;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::RefreshError;
use crate::kommo::MappedContact;

/// A JSON document as compact text, serialised once when the page is mapped
/// and written to staging byte for byte: the staging transaction does not
/// spend its time turning `serde_json` trees into text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    pub fn of(v: &Value) -> Self {
        JsonText(v.to_string())
    }
}

impl ToSql for JsonText {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // The binary forms of `text` and `json` are both the UTF-8 text.
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TEXT | Type::JSON)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        // Only documents that parse are staged, and only as JSON.
        serde_json::from_str::<&serde_json::value::RawValue>(text)?;
        Ok(JsonText(text.to_string()))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TEXT | Type::JSON)
    }
}

/// A lead as the mapping left it, ready for `stg_kommo_leads`.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedLead {
    pub lead_id: i64,
    /// The lead as Kommo sent it, for troubleshooting.
    pub payload: JsonText,
    pub contact_id: Option<i64>,
    pub vehicle_enum_id: Option<i64>,
    pub source_enum_id: Option<i64>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
    pub status_id: i64,
    pub pipeline_id: Option<i64>,
    pub price: Option<i64>,
    pub responsible_user_id: Option<i64>,
    pub owner_id: Option<Uuid>,
    pub booking_status: String,
    /// Excluded statuses go to `sales_leads` only.
    pub excluded: bool,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub lead_source: Option<String>,
    pub closed_at: Option<DateTime<Utc>>,
}

/// A contact as the mapping left it, ready for `stg_kommo_contacts`.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedContact {
    pub contact: MappedContact,
    /// The contact as Kommo sent it, for troubleshooting.
    pub payload: JsonText,
}

/// A lead's vehicle, ready for `stg_kommo_booking_vehicles`.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedVehicle {
    pub lead_id: i64,
    pub vehicle_enum_id: i64,
    pub vehicle_name: Option<String>,
    pub is_primary: bool,
}

/// One page worth of rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StagedPage {
    pub leads: Vec<StagedLead>,
    pub contacts: Vec<StagedContact>,
    pub vehicles: Vec<StagedVehicle>,
}

/// One staging table: its name, its columns and how a staged row becomes
/// the values of those columns, written once for `COPY` here and for the
/// row-by-row baseline that tests and the benchmark compare it with.
pub struct StagingTable<T: 'static, const N: usize> {
    pub name: &'static str,
    pub columns: &'static str,
    pub types: [Type; N],
    pub values: for<'a> fn(&'a Uuid, &'a T) -> [&'a (dyn ToSql + Sync); N],
}

/// `stg_kommo_leads`.
pub static LEADS: StagingTable<StagedLead, 20> = StagingTable {
    name: "stg_kommo_leads",
    columns: "run_id, lead_id, payload, contact_id, vehicle_enum_id, source_enum_id, \
     created_at, updated_at, name, status_id, pipeline_id, price, responsible_user_id, owner_id, \
     booking_status, excluded, start_at, end_at, lead_source, closed_at",
    types: [
        Type::UUID,
        Type::INT8,
        // text: see migrations V12 and V13.
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::UUID,
        Type::TEXT,
        Type::BOOL,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TIMESTAMPTZ,
    ],
    values: lead_values,
};

/// `stg_kommo_contacts`.
pub static CONTACTS: StagingTable<StagedContact, 10> = StagingTable {
    name: "stg_kommo_contacts",
    columns: "run_id, contact_id, payload, full_name, first_name, last_name, \
     email, phone, phone_normalized, updated_at",
    types: [
        Type::UUID,
        Type::INT8,
        // text: see migrations V12 and V13.
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
    ],
    values: contact_values,
};

/// `stg_kommo_booking_vehicles`.
pub static VEHICLES: StagingTable<StagedVehicle, 5> = StagingTable {
    name: "stg_kommo_booking_vehicles",
    columns: "run_id, lead_id, vehicle_enum_id, vehicle_name, is_primary",
    types: [Type::UUID, Type::INT8, Type::INT8, Type::TEXT, Type::BOOL],
    values: vehicle_values,
};

fn lead_values<'a>(run_id: &'a Uuid, l: &'a StagedLead) -> [&'a (dyn ToSql + Sync); 20] {
    [
        run_id,
        &l.lead_id,
        &l.payload,
        &l.contact_id,
        &l.vehicle_enum_id,
        &l.source_enum_id,
        &l.created_at,
        &l.updated_at,
        &l.name,
        &l.status_id,
        &l.pipeline_id,
        &l.price,
        &l.responsible_user_id,
        &l.owner_id,
        &l.booking_status,
        &l.excluded,
        &l.start_at,
        &l.end_at,
        &l.lead_source,
        &l.closed_at,
    ]
}

fn contact_values<'a>(run_id: &'a Uuid, c: &'a StagedContact) -> [&'a (dyn ToSql + Sync); 10] {
    let m = &c.contact;
    [
        run_id,
        &m.contact_id,
        &c.payload,
        &m.full_name,
        &m.first_name,
        &m.last_name,
        &m.email,
        &m.phone,
        &m.phone_normalized,
        &m.updated_at,
    ]
}

fn vehicle_values<'a>(run_id: &'a Uuid, v: &'a StagedVehicle) -> [&'a (dyn ToSql + Sync); 5] {
    [
        run_id,
        &v.lead_id,
        &v.vehicle_enum_id,
        &v.vehicle_name,
        &v.is_primary,
    ]
}

/// How much of the `COPY` stream is framed before it goes to the
/// connection: large enough that a page of leads is a handful of writes,
/// small enough that the server starts on the first rows while the rest
/// are framed.
const COPY_CHUNK_BYTES: usize = 32 * 1024;

/// The binary `COPY` header: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Streams rows into `table` with `COPY … (FORMAT binary)`.
async fn copy_rows<T, const N: usize>(
    tx: &Transaction<'_>,
    table: &StagingTable<T, N>,
    run_id: &Uuid,
    rows: &[T],
) -> Result<u64, RefreshError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            table.name, table.columns
        ))
        .await?;
    let mut sink = pin!(sink);
    let mut buf = BytesMut::with_capacity(2 * COPY_CHUNK_BYTES);
    buf.put_slice(COPY_HEADER);
    for row in rows {
        encode_row(&mut buf, table, &(table.values)(run_id, row))?;
        if buf.len() >= COPY_CHUNK_BYTES {
            sink.send(buf.split().freeze()).await?;
        }
    }
    // The trailer: a row of -1 fields.
    buf.put_i16(-1);
    sink.send(buf.split().freeze()).await?;
    Ok(sink.as_mut().finish().await?)
}

/// One row of the binary `COPY` format: the field count, then each field's
/// length (-1 for NULL) and bytes.
fn encode_row<T, const N: usize>(
    buf: &mut BytesMut,
    table: &StagingTable<T, N>,
    values: &[&(dyn ToSql + Sync); N],
) -> Result<(), RefreshError> {
    buf.put_i16(N as i16);
    for (value, ty) in values.iter().zip(&table.types) {
        let at = buf.len();
        buf.put_i32(0);
        let encoded = value.to_sql_checked(ty, buf).map_err(|e| {
            RefreshError::Internal(format!("a {} value for {}: {e}", ty.name(), table.name))
        })?;
        let len = match encoded {
            IsNull::Yes => -1,
            IsNull::No => i32::try_from(buf.len() - at - 4).map_err(|_| {
                RefreshError::Internal(format!(
                    "a {} value over 2 GiB for {}",
                    ty.name(),
                    table.name
                ))
            })?,
        };
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Writes one page of rows into the three staging tables.
pub async fn stage_page(
    tx: &Transaction<'_>,
    run_id: Uuid,
    page: &StagedPage,
) -> Result<(), RefreshError> {
    copy_rows(tx, &LEADS, &run_id, &page.leads).await?;
    copy_rows(tx, &CONTACTS, &run_id, &page.contacts).await?;
    copy_rows(tx, &VEHICLES, &run_id, &page.vehicles).await?;
    Ok(())
}

/// Deletes staging of successful runs except the `keep` most recent ones.
/// Failed and held runs keep theirs for inspection.
pub async fn cleanup(
    client: &impl tokio_postgres::GenericClient,
    keep: i64,
) -> Result<u64, RefreshError> {
    let old = "SELECT id FROM kommo_import_runs WHERE status = 'succeeded'
                ORDER BY finished_at DESC NULLS LAST, started_at DESC OFFSET $1";
    let mut n = 0;
    for table in [
        "stg_kommo_booking_vehicles",
        "stg_kommo_contacts",
        "stg_kommo_leads",
    ] {
        n += client
            .execute(
                &format!("DELETE FROM {table} WHERE run_id IN ({old})"),
                &[&keep.max(1)],
            )
            .await?;
    }
    Ok(n)
}
