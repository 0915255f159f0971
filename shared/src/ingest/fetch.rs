//! Reading a batch's leads and contacts from the Kommo API, once per batch,
//! and mapping them with the shared mapping, as the full refresh does.
//!
//! Webhooks carry neither contacts nor catalog elements, and a fresh read is
//! never older than the hook, so the API's answer is what gets applied.

use std::collections::HashMap;

use crate::kommo::KommoError;

use crate::{
    kommo::{
        map_contact, map_lead_with_contact,
        webhook::{Action, Delivery, Entity},
        Contact, KommoClient, MappedContact, MappedLead, MappingCache,
    },
    platform::db::DbPool,
};

/// A lead mapped by the shared mapping, with its main contact, or why it could not be.
pub type FetchedLead = Result<(MappedLead, Option<MappedContact>), String>;

/// What the Kommo API says now about the leads and contacts of a batch.
/// Ids Kommo does not return (deleted) are absent.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub leads: HashMap<i64, FetchedLead>,
    pub contacts: HashMap<i64, Result<MappedContact, String>>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("Kommo fetch failed: {message}")]
pub struct FetchError {
    pub message: String,
    /// Nothing that needs a fetch can succeed for now (see
    /// [`KommoError::is_systemic`]); the database being down counts too.
    pub systemic: bool,
}

impl From<KommoError> for FetchError {
    fn from(e: KommoError) -> Self {
        FetchError {
            systemic: e.is_systemic(),
            message: e.to_string(),
        }
    }
}

impl FetchError {
    fn store(message: String) -> Self {
        FetchError {
            message,
            systemic: true,
        }
    }
}

/// Contacts a delivery changed.
pub fn contact_ids_to_fetch(d: &Delivery) -> Vec<i64> {
    d.events
        .iter()
        .filter(|e| {
            e.entity == Entity::Contact
                && matches!(
                    e.action,
                    Action::Add | Action::Update | Action::Restore | Action::Responsible
                )
        })
        .map(|e| e.id)
        .collect()
}

/// Leads to read from the API: changed ones, and deleted ones too, so a late
/// delete of a lead that exists again (restored since) is recognised.
pub fn lead_ids_to_fetch(d: &Delivery) -> Vec<i64> {
    let mut ids = d.leads_to_fetch();
    ids.extend(
        d.events
            .iter()
            .filter(|e| e.entity == Entity::Lead && e.action == Action::Delete)
            .map(|e| e.id),
    );
    ids
}

pub fn needs_fetch(d: &Delivery) -> bool {
    !lead_ids_to_fetch(d).is_empty() || !contact_ids_to_fetch(d).is_empty()
}

/// Reads the leads and contacts (one call each; a lead's main contact is read
/// too) and maps them with the mapping tables `mapping` holds.
pub async fn fetch(
    pool: &DbPool,
    mapping: &MappingCache,
    kommo: &KommoClient,
    lead_ids: &[i64],
    contact_ids: &[i64],
) -> Result<Fetched, FetchError> {
    let cfg = mapping
        .get(pool)
        .await
        .map_err(|e| FetchError::store(e.to_string()))?;
    let leads = if lead_ids.is_empty() {
        Vec::new()
    } else {
        kommo
            .leads_by_ids(lead_ids)
            .await
            .map_err(FetchError::from)?
    };
    // Kommo lists deleted leads only on request; a flagged one counts as gone.
    let leads: Vec<_> = leads.into_iter().filter(|l| !l.is_deleted).collect();
    let mut wanted: Vec<i64> = contact_ids.to_vec();
    wanted.extend(leads.iter().filter_map(|l| l.main_contact_id()));
    wanted.sort_unstable();
    wanted.dedup();
    let contacts = if wanted.is_empty() {
        Vec::new()
    } else {
        kommo
            .contacts_by_ids(&wanted)
            .await
            .map_err(FetchError::from)?
    };
    let by_id: HashMap<i64, &Contact> = contacts.iter().map(|c| (c.id, c)).collect();

    let mut out = Fetched::default();
    for lead in &leads {
        let main = lead
            .main_contact_id()
            .and_then(|id| by_id.get(&id).copied());
        let mapped = map_lead_with_contact(lead, main, &cfg).map_err(|e| e.to_string());
        if let Ok((m, _)) = &mapped {
            for w in &m.warnings {
                tracing::warn!(lead_id = m.lead_id, warning = %w, "processor: lead mapped with a warning");
            }
        }
        out.leads.insert(lead.id, mapped);
    }
    for id in contact_ids {
        if let Some(c) = by_id.get(id) {
            out.contacts
                .insert(*id, map_contact(c).map_err(|e| e.to_string()));
        }
    }
    Ok(out)
}
