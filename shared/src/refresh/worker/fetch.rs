//! Fetching: the year's leads from Kommo page by page, mapped into staging
//! rows together with the contacts they need; each page is saved with the
//! checkpoint that follows it.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{
    checkpoint::{save_page, Checkpoint},
    Worker,
};
use crate::{
    kommo::{
        map_contact, map_lead, mapping::STATUS_LOST, KommoError, Lead, LeadsPage, MappedLead,
        MappingConfig,
    },
    platform::deadline::Deadline,
    refresh::{
        staging::{JsonText, StagedContact, StagedLead, StagedPage, StagedVehicle},
        RefreshError,
    },
};

/// Why fetching stopped early.
pub(super) enum Stop {
    Kommo {
        page: u32,
        error: KommoError,
    },
    Db(RefreshError),
    /// The run was closed by someone else meanwhile.
    Closed,
}

impl From<RefreshError> for Stop {
    fn from(e: RefreshError) -> Self {
        Stop::Db(e)
    }
}

impl From<tokio_postgres::Error> for Stop {
    fn from(e: tokio_postgres::Error) -> Self {
        Stop::Db(e.into())
    }
}

impl Worker {
    /// Fetches pages until the end (`Ok(true)`) or the deadline (`Ok(false)`).
    pub(super) async fn fetch(
        &self,
        client: &mut tokio_postgres::Client,
        run_id: Uuid,
        cp: &mut Checkpoint,
        deadline: Deadline,
    ) -> Result<bool, Stop> {
        let mapping = MappingConfig::load(&*client)
            .await
            .map_err(|e| Stop::Db(RefreshError::Mapping(e)))?;
        let mut pages_now = 0u32;
        loop {
            if pages_now > 0 && deadline.near() {
                return Ok(false);
            }
            let page_no = cp.next_page;
            let page = self
                .kommo
                .leads_page(cp.from, cp.to, page_no, self.settings.page_limit)
                .await
                .map_err(|error| Stop::Kommo {
                    page: page_no,
                    error,
                })?;
            let mut mapped = MappedPage::of(&page, cp, &mapping);
            self.add_contacts(&*client, run_id, page_no, &mut mapped)
                .await?;

            cp.next_page = page_no + 1;
            cp.max_lead_id = cp.max_lead_id.max(mapped.max_lead_id);
            cp.skipped += mapped.skipped;
            cp.fetch_done = !page.has_next;
            save_page(client, run_id, cp, &mapped.staged).await?;
            pages_now += 1;
            tracing::debug!(%run_id, page = page_no, leads = mapped.staged.leads.len(), contacts = mapped.staged.contacts.len(), "page staged");
            if cp.fetch_done {
                return Ok(true);
            }
        }
    }

    /// Fetches and maps the page's contacts that no earlier page staged.
    async fn add_contacts(
        &self,
        client: &tokio_postgres::Client,
        run_id: Uuid,
        page_no: u32,
        mapped: &mut MappedPage,
    ) -> Result<(), Stop> {
        let ids: Vec<i64> = std::mem::take(&mut mapped.contact_ids)
            .into_iter()
            .collect();
        let known: BTreeSet<i64> = client
            .query(
                "SELECT contact_id FROM stg_kommo_contacts WHERE run_id = $1 AND contact_id = ANY($2)",
                &[&run_id, &ids],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<i64> = ids.into_iter().filter(|i| !known.contains(i)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let contacts = self
            .kommo
            .contacts_by_ids(&missing)
            .await
            .map_err(|error| Stop::Kommo {
                page: page_no,
                error,
            })?;
        let mut seen = BTreeSet::new();
        for c in contacts {
            if !seen.insert(c.id) || known.contains(&c.id) {
                continue;
            }
            match map_contact(&c) {
                Ok(contact) => mapped.staged.contacts.push(StagedContact {
                    contact,
                    payload: JsonText::of(&c.raw),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "contact skipped");
                    mapped.skipped += 1;
                }
            }
        }
        Ok(())
    }
}

/// One Kommo page mapped into staging rows.
struct MappedPage {
    staged: StagedPage,
    /// Main contacts of the staged leads, still to be staged.
    contact_ids: BTreeSet<i64>,
    skipped: u64,
    /// Highest lead id on the page, kept or not.
    max_lead_id: i64,
}

impl MappedPage {
    fn of(page: &LeadsPage, cp: &Checkpoint, mapping: &MappingConfig) -> Self {
        let mut out = MappedPage {
            staged: StagedPage::default(),
            contact_ids: BTreeSet::new(),
            skipped: page.invalid.len() as u64,
            max_lead_id: page.leads.iter().map(|l| l.id).max().unwrap_or(0),
        };
        for lead in wanted_leads(page, cp) {
            match map_lead(lead, mapping) {
                Ok(m) => out.add_lead(lead, m),
                Err(e) => {
                    tracing::warn!(error = %e, "lead skipped");
                    out.skipped += 1;
                }
            }
        }
        out
    }

    fn add_lead(&mut self, lead: &Lead, m: MappedLead) {
        if !m.warnings.is_empty() {
            tracing::info!(lead_id = m.lead_id, warnings = ?m.warnings, "lead mapped with warnings");
        }
        if let Some(c) = m.main_contact_id {
            self.contact_ids.insert(c);
        }
        if let Some(v) = m.vehicle_enum_id {
            self.staged.vehicles.push(StagedVehicle {
                lead_id: m.lead_id,
                vehicle_enum_id: v,
                vehicle_name: m.vehicle_name.clone(),
                is_primary: true,
            });
        }
        self.staged.leads.push(StagedLead {
            lead_id: m.lead_id,
            payload: JsonText::of(&lead.raw),
            contact_id: m.main_contact_id,
            vehicle_enum_id: m.vehicle_enum_id,
            source_enum_id: m.source_enum_id,
            created_at: Some(m.created_at),
            updated_at: Some(m.kommo_updated_at),
            name: m.name,
            status_id: m.status_id,
            pipeline_id: Some(m.pipeline_id),
            price: m.price,
            responsible_user_id: m.responsible_user_id,
            owner_id: m.owner_staff_id,
            booking_status: m.booking_status,
            excluded: m.excluded,
            start_at: m.start_at,
            end_at: m.end_at,
            lead_source: m.source,
            closed_at: m.closed_at,
        });
    }
}

/// The page's leads that belong to the run. Re-checked here: the API's
/// filters are not trusted, and offset paging over live data repeats leads
/// at or below the highest id already seen.
fn wanted_leads<'a>(page: &'a LeadsPage, cp: &Checkpoint) -> Vec<&'a Lead> {
    let mut last = cp.max_lead_id;
    page.leads
        .iter()
        .filter(|l| {
            let keep = l.status_id != STATUS_LOST
                && !l.is_deleted
                && l.created_at >= cp.from
                && l.created_at <= cp.to
                && l.id > last;
            if l.id > last {
                last = l.id;
            }
            keep
        })
        .collect()
}
