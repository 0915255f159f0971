//! `clients`: a person in the ERP, from a Kommo contact or typed by staff.
//!
//! Which existing client a person is has one rule, [`client_match!`], used by
//! the per-row path ([`find_client`], for webhooks and manual bookings) with
//! a one-row input and by the set-based path ([`UPDATE_STAGED`], the full
//! refresh) with a whole run's contacts. The profile update from Kommo is
//! likewise one statement body fed either one row or a run.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{
    kommo::{mapping::normalize_phone, MappedContact},
    platform::{db::DbError, text::non_empty},
};

/// What we know about a person, from Kommo or from the manual form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInput {
    pub kommo_contact_id: Option<i64>,
    pub full_name: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// Kommo's `updated_at` of the contact; `None` for manual input.
    pub kommo_updated_at: Option<DateTime<Utc>>,
}

impl ClientInput {
    /// Kommo input overwrites a profile; manual input only fills its blanks.
    fn is_from_kommo(&self) -> bool {
        self.kommo_updated_at.is_some() || self.kommo_contact_id.is_some()
    }
}

impl From<&MappedContact> for ClientInput {
    fn from(c: &MappedContact) -> Self {
        ClientInput {
            kommo_contact_id: Some(c.contact_id),
            full_name: c.full_name.clone(),
            first_name: c.first_name.clone(),
            last_name: c.last_name.clone(),
            email: c.email.clone(),
            phone: c.phone.clone(),
            kommo_updated_at: c.updated_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOutcome {
    pub id: Uuid,
    pub created: bool,
    /// False when the stored row was newer and left alone.
    pub applied: bool,
}

/// How an existing client was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    KommoContactId,
    Email,
    Phone,
}

/// The values written, cleaned as both paths store them.
struct Profile {
    full_name: String,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    phone_normalized: Option<String>,
}

impl Profile {
    /// `full_name` to `phone_normalized`, in [`client_columns!`] order.
    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.full_name,
            &self.first_name,
            &self.last_name,
            &self.email,
            &self.phone,
            &self.phone_normalized,
        ]
    }

    /// Every value of [`client_columns!`], in order.
    fn with_kommo_keys<'a>(&'a self, c: &'a ClientInput) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&c.kommo_contact_id];
        params.extend(self.params());
        params.push(&c.kommo_updated_at);
        params
    }
}

impl From<&ClientInput> for Profile {
    fn from(c: &ClientInput) -> Self {
        let phone = non_empty(c.phone.as_deref());
        Profile {
            full_name: c.full_name.trim().to_string(),
            first_name: non_empty(c.first_name.as_deref()),
            last_name: non_empty(c.last_name.as_deref()),
            email: non_empty(c.email.as_deref()),
            phone_normalized: phone.as_deref().and_then(normalize_phone),
            phone,
        }
    }
}

/// The matching rule, over a relation `input(contact_id, email,
/// phone_normalized)`: a client is found by `kommo_contact_id`, else by email
/// (case-insensitive), else by normalised phone, oldest client first. Email
/// and phone only match a client not tied to another Kommo contact, so two
/// Kommo contacts sharing a family email stay two clients. When several input
/// rows find the same client, the one found by contact id (then the smallest
/// contact id) gets it and the others find none, as if they came one by one.
macro_rules! client_match {
    () => {
        "matched AS (
            SELECT DISTINCT ON (m.client_id) i.contact_id, m.client_id, m.matched_by
              FROM input i
              CROSS JOIN LATERAL (
                    SELECT c.id AS client_id, 1 AS rank, 'kommo_contact_id' AS matched_by
                      FROM clients c WHERE c.kommo_contact_id = i.contact_id
                    UNION ALL
                    (SELECT c.id, 2, 'email' FROM clients c
                      WHERE i.email IS NOT NULL AND c.email IS NOT NULL
                        AND lower(c.email) = lower(i.email)
                        AND (i.contact_id IS NULL OR c.kommo_contact_id IS NULL
                             OR c.kommo_contact_id = i.contact_id)
                      ORDER BY c.created_at, c.id LIMIT 1)
                    UNION ALL
                    (SELECT c.id, 3, 'phone' FROM clients c
                      WHERE c.phone_normalized = i.phone_normalized
                        AND (i.contact_id IS NULL OR c.kommo_contact_id IS NULL
                             OR c.kommo_contact_id = i.contact_id)
                      ORDER BY c.created_at, c.id LIMIT 1)
                    ORDER BY rank LIMIT 1) m
             ORDER BY m.client_id, m.rank, i.contact_id NULLS LAST)"
    };
}

/// The columns of a client written from Kommo or the form.
macro_rules! client_columns {
    () => {
        "kommo_contact_id, full_name, first_name, last_name, email, phone, phone_normalized, \
         kommo_updated_at"
    };
}

/// A Kommo contact's profile over a found client, from a relation
/// `source(client_id, contact_id, full_name, first_name, last_name, email,
/// phone, phone_normalized, updated_at)`. Kommo's empty values do not erase
/// what staff entered, and a row changed in Kommo later is left alone.
macro_rules! kommo_profile_update {
    () => {
        "UPDATE clients c SET
                kommo_contact_id = coalesce(s.contact_id, c.kommo_contact_id),
                full_name = coalesce(nullif(s.full_name, ''), c.full_name),
                first_name = coalesce(s.first_name, c.first_name),
                last_name = coalesce(s.last_name, c.last_name),
                email = coalesce(s.email, c.email),
                phone = coalesce(s.phone, c.phone),
                phone_normalized = coalesce(s.phone_normalized, c.phone_normalized),
                kommo_updated_at = greatest(c.kommo_updated_at, s.updated_at),
                updated_at = now()
           FROM source s
          WHERE c.id = s.client_id
            AND (c.kommo_updated_at IS NULL OR s.updated_at IS NULL
                 OR c.kommo_updated_at <= s.updated_at)"
    };
}

/// The columns of the `source` relation [`kommo_profile_update!`] reads.
macro_rules! profile_source {
    () => {
        "source (client_id, contact_id, full_name, first_name, last_name, email, phone, \
         phone_normalized, updated_at)"
    };
}

const FIND_ONE: &str = concat!(
    "WITH input (contact_id, email, phone_normalized) AS (VALUES ($1::bigint, $2::text, $3::text)), ",
    client_match!(),
    " SELECT c.id, m.matched_by FROM matched m JOIN clients c ON c.id = m.client_id FOR UPDATE OF c"
);

const INSERT_ONE: &str = concat!(
    "INSERT INTO clients (",
    client_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (kommo_contact_id) DO NOTHING RETURNING id"
);

const UPDATE_ONE_FROM_KOMMO: &str = concat!(
    "WITH ",
    profile_source!(),
    " AS (VALUES ($1::uuid, $2::bigint, $3::text, $4::text, $5::text, $6::text, $7::text,
                  $8::text, $9::timestamptz)) ",
    kommo_profile_update!(),
    " RETURNING c.id"
);

/// Staff typing a booking must not silently rewrite a client's record: the
/// form only fills fields that are still empty.
const FILL_BLANKS: &str = "UPDATE clients SET
        full_name = CASE WHEN full_name = '' THEN $2 ELSE full_name END,
        first_name = coalesce(first_name, $3),
        last_name = coalesce(last_name, $4),
        email = coalesce(email, $5),
        phone = coalesce(phone, $6),
        phone_normalized = coalesce(phone_normalized, $7),
        updated_at = now()
  WHERE id = $1
  RETURNING id";

/// The staged contacts of a run as the matching input.
macro_rules! staged_input {
    () => {
        "WITH input AS (SELECT contact_id, email, phone_normalized
                          FROM stg_kommo_contacts WHERE run_id = $1), "
    };
}

/// The full refresh's clients, step one: every staged contact of the run
/// (`$1`) matched to existing clients exactly as [`find_client`] matches one,
/// so a client typed by staff with the contact's email or phone gets no
/// Kommo twin.
pub(super) const UPDATE_STAGED: &str = concat!(
    staged_input!(),
    client_match!(),
    ", ",
    profile_source!(),
    " AS (SELECT m.client_id, s.contact_id, s.full_name, s.first_name, s.last_name, s.email,
                 s.phone, s.phone_normalized, s.updated_at
            FROM matched m JOIN stg_kommo_contacts s ON s.run_id = $1 AND s.contact_id = m.contact_id) ",
    kommo_profile_update!()
);

/// After [`UPDATE_STAGED`] every matched contact's client carries its
/// contact id, so the conflict skips it; the rest are new clients.
pub(super) const INSERT_STAGED: &str = concat!(
    "INSERT INTO clients (",
    client_columns!(),
    ") SELECT contact_id, coalesce(full_name, ''), first_name, last_name, email, phone,
              phone_normalized, updated_at
         FROM stg_kommo_contacts WHERE run_id = $1
       ON CONFLICT (kommo_contact_id) DO NOTHING"
);

/// Finds the client a person is (see [`client_match!`]) and locks its row.
pub async fn find_client(
    tx: &Transaction<'_>,
    c: &ClientInput,
) -> Result<Option<(Uuid, MatchedBy)>, DbError> {
    let email = non_empty(c.email.as_deref());
    let phone = c.phone.as_deref().and_then(normalize_phone);
    let row = tx
        .query_opt(
            &tx.prepare_cached(FIND_ONE).await?,
            &[&c.kommo_contact_id, &email, &phone],
        )
        .await?;
    Ok(row.map(|r| {
        let by = match r.get::<_, &str>(1) {
            "kommo_contact_id" => MatchedBy::KommoContactId,
            "email" => MatchedBy::Email,
            _ => MatchedBy::Phone,
        };
        (r.get(0), by)
    }))
}

/// Creates or refreshes a client.
///
/// Kommo input overwrites the profile unless the stored `kommo_updated_at`
/// is newer. Manual input only fills fields that are still empty.
pub async fn upsert_client(
    tx: &Transaction<'_>,
    c: &ClientInput,
) -> Result<ClientOutcome, DbError> {
    let p = Profile::from(c);
    let Some((id, _)) = find_client(tx, c).await? else {
        // ON CONFLICT: a concurrent delivery for the same contact may insert
        // first; then this one updates the row it created.
        let row = tx
            .query_opt(&tx.prepare_cached(INSERT_ONE).await?, &p.with_kommo_keys(c))
            .await?;
        return match row {
            Some(row) => Ok(ClientOutcome {
                id: row.get(0),
                created: true,
                applied: true,
            }),
            None => Box::pin(upsert_client(tx, c)).await,
        };
    };
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id];
    let sql = if c.is_from_kommo() {
        params.extend(p.with_kommo_keys(c));
        UPDATE_ONE_FROM_KOMMO
    } else {
        params.extend(p.params());
        FILL_BLANKS
    };
    let row = tx
        .query_opt(&tx.prepare_cached(sql).await?, &params)
        .await?;
    Ok(ClientOutcome {
        id,
        created: false,
        applied: row.is_some(),
    })
}

/// Whether a client with this id exists.
pub async fn exists(tx: &tokio_postgres::Transaction<'_>, id: Uuid) -> Result<bool, DbError> {
    Ok(tx
        .query_opt("SELECT 1 FROM clients WHERE id = $1", &[&id])
        .await?
        .is_some())
}

/// The outbox's settle: Zoho contact ids of clients Zoho accepted, and the
/// fingerprint of what it received (None: only the id was learnt).
pub async fn set_zoho_contact_ids(
    tx: &tokio_postgres::Transaction<'_>,
    client_ids: &[Uuid],
    zoho_ids: &[String],
    fingerprints: &[Option<String>],
) -> Result<(), DbError> {
    if client_ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "UPDATE clients c
            SET zoho_contact_id = u.zid, updated_at = now(),
                zoho_fingerprint = coalesce(u.fp, c.zoho_fingerprint),
                zoho_synced_at = CASE WHEN u.fp IS NULL THEN c.zoho_synced_at ELSE now() END
           FROM (SELECT DISTINCT ON (id) id, zid, fp
                   FROM unnest($1::uuid[], $2::text[], $3::text[]) AS x(id, zid, fp)
                  ORDER BY id, fp NULLS LAST) AS u
          WHERE c.id = u.id
            AND (c.zoho_contact_id IS DISTINCT FROM u.zid OR u.fp IS NOT NULL)",
        &[&client_ids, &zoho_ids, &fingerprints],
    )
    .await?;
    Ok(())
}
