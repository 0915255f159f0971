//! One claimed batch sent to Zoho: contacts first (in calls of at most 100,
//! `zoho_concurrency` at a time), then the sales orders that needed them.
//! The first throttle, 429, broken credential or near deadline stops every
//! call that has not started; its rows are handed back uncharged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{stream, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    load::{self, Clients},
    plan::{self, ContactState, Plan, ReadyOrder},
    records::{contact_record, order_record},
    Drain, StopReason,
};
use crate::{
    outbox::{
        store::{ClaimedRow, Effect, Outcome, Settlement},
        OutboxError,
    },
    platform::{config::ZohoSettings, deadline::Deadline},
    zoho::{ErrorClass, ZohoClient, ZohoError, MAX_RECORDS_PER_CALL},
};

/// One claimed batch being dispatched.
pub(super) struct Batch<'a> {
    drain: &'a Drain,
    zoho: Arc<ZohoClient>,
    deadline: Deadline,
    stop: Mutex<Option<(StopReason, String)>>,
}

impl<'a> Batch<'a> {
    pub fn new(drain: &'a Drain, zoho: Arc<ZohoClient>, deadline: Deadline) -> Self {
        Batch {
            drain,
            zoho,
            deadline,
            stop: Mutex::new(None),
        }
    }

    fn settings(&self) -> &ZohoSettings {
        self.zoho.settings()
    }

    /// Why this batch stopped sending, if it did.
    pub fn stopped(&self) -> Option<(StopReason, String)> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_stop(&self, reason: StopReason, detail: String) {
        let mut g = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            tracing::warn!(?reason, detail = %detail, "drain stops sending");
            *g = Some((reason, detail));
        }
    }

    /// Why a call must not start now, if it must not.
    fn hold(&self) -> Option<String> {
        if let Some((_, detail)) = self.stopped() {
            return Some(detail);
        }
        if self.deadline.near() {
            self.set_stop(StopReason::Deadline, "deadline margin reached".into());
            return Some("handed back: deadline margin reached".into());
        }
        None
    }

    /// Notes what an error means for the rest of the run.
    fn observe(&self, e: &ZohoError) {
        match (e.class(), e) {
            (ErrorClass::Throttled, _) => self.set_stop(StopReason::Throttled, e.to_string()),
            (ErrorClass::Systemic, _) => self.set_stop(StopReason::Systemic, e.to_string()),
            (_, ZohoError::RateLimited { .. }) => {
                self.set_stop(StopReason::RateLimited, e.to_string())
            }
            _ => {}
        }
    }

    /// Sends the batch; returns how every row settles.
    pub async fn dispatch(&self, rows: Vec<ClaimedRow>) -> Result<Vec<Settlement>, OutboxError> {
        let sorted = plan::sort(rows);
        let (clients, bookings) = {
            let conn = self.drain.pool.get().await?;
            load::clients_and_bookings(&conn, &sorted.contacts, &sorted.orders).await?
        };
        let plan = Plan::new(sorted, &clients, &bookings);
        let mut out = plan.settled;

        let mut contacts = self.send_contacts(&plan.to_send, &clients).await;
        self.check_contact_conflicts(&mut contacts).await?;
        let settings = &self.drain.settings;
        out.extend(plan::settle_contact_rows(
            plan.contact_rows,
            &contacts,
            settings,
        ));

        let (ready, settled) =
            plan::route_orders(plan.orders, &clients, &bookings, &contacts, settings);
        out.extend(settled);
        if !ready.is_empty() && self.settings().product_id.is_none() {
            self.set_stop(
                StopReason::Systemic,
                "ZOHO_PRODUCT_ID is not set: sales orders need a product".into(),
            );
        }
        let results: Vec<Settlement> = stream::iter(ready)
            .map(|order| self.send_order(order))
            .buffer_unordered(settings.zoho_concurrency.max(1))
            .collect()
            .await;
        out.extend(results);
        Ok(out)
    }

    /// Upserts contacts in calls of at most 100, `zoho_concurrency` at a time.
    async fn send_contacts(
        &self,
        to_send: &[Uuid],
        clients: &Clients,
    ) -> HashMap<Uuid, ContactState> {
        let key_field = self.settings().contact_key_field.clone();
        let chunks: Vec<Vec<(Uuid, Value)>> = to_send
            .chunks(MAX_RECORDS_PER_CALL)
            .map(|chunk| {
                chunk
                    .iter()
                    .filter_map(|id| {
                        clients
                            .get(id)
                            .map(|c| (*id, contact_record(*id, c, key_field.as_deref())))
                    })
                    .collect()
            })
            .collect();
        let concurrency = self.drain.settings.zoho_concurrency.max(1);
        let per_chunk: Vec<Vec<(Uuid, ContactState)>> = stream::iter(chunks)
            .map(|chunk| self.send_contact_chunk(chunk))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        per_chunk.into_iter().flatten().collect()
    }

    /// One upsert call; a failed call gives every contact in it the same state.
    async fn send_contact_chunk(&self, chunk: Vec<(Uuid, Value)>) -> Vec<(Uuid, ContactState)> {
        let state = if let Some(reason) = self.hold() {
            ContactState::NotSent(Some(reason))
        } else {
            let records: Vec<Value> = chunk.iter().map(|(_, r)| r.clone()).collect();
            match self.zoho.upsert_contacts(&records).await {
                Ok(results) => {
                    return chunk
                        .into_iter()
                        .zip(results)
                        .map(|((id, _), r)| (id, ContactState::of(r)))
                        .collect()
                }
                Err(e) => {
                    self.observe(&e);
                    let msg = e.to_string();
                    match e.class() {
                        ErrorClass::Retryable => ContactState::Retry(msg),
                        ErrorClass::Permanent => ContactState::Failed(msg),
                        ErrorClass::Throttled | ErrorClass::Systemic => {
                            ContactState::NotSent(Some(msg))
                        }
                    }
                }
            }
        };
        chunk
            .into_iter()
            .map(|(id, _)| (id, state.clone()))
            .collect()
    }

    /// `clients.zoho_contact_id` is unique: a Zoho contact already linked to
    /// another client (same email, say) fails this row instead of the batch.
    async fn check_contact_conflicts(
        &self,
        contacts: &mut HashMap<Uuid, ContactState>,
    ) -> Result<(), OutboxError> {
        let mut synced: Vec<(Uuid, String)> = contacts
            .iter()
            .filter_map(|(c, s)| match s {
                ContactState::Synced { zoho_id, .. } => Some((*c, zoho_id.clone())),
                _ => None,
            })
            .collect();
        if synced.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = synced.iter().map(|(_, z)| z.clone()).collect();
        let mut owner_of = {
            let conn = self.drain.pool.get().await?;
            load::contact_owners(&conn, &ids).await?
        };
        synced.sort();
        for (client, zoho_id) in synced {
            match owner_of.get(&zoho_id) {
                Some(other) if *other != client => {
                    contacts.insert(
                        client,
                        ContactState::Failed(format!(
                            "Zoho contact {zoho_id} is already linked to client {other}"
                        )),
                    );
                }
                Some(_) => {}
                None => {
                    owner_of.insert(zoho_id, client);
                }
            }
        }
        Ok(())
    }

    async fn send_order(&self, order: ReadyOrder) -> Settlement {
        let ReadyOrder {
            row,
            booking,
            contact_id,
            contact_effect,
        } = order;
        let mut effects: Vec<Effect> = contact_effect.into_iter().collect();
        let outcome = if let Some(reason) = self.hold() {
            Outcome::Uncharged {
                reason: Some(reason),
                delay: Duration::ZERO,
            }
        } else {
            let record = order_record(row.entity_id, &contact_id, &booking, self.settings());
            match self.zoho.create_sales_order(&record).await {
                Ok(so) => {
                    effects.push(Effect::SalesOrder {
                        booking_id: row.entity_id,
                        zoho_id: so.id.clone(),
                    });
                    Outcome::Succeeded {
                        response: json!({
                            "zoho_sales_order_id": so.id,
                            "already_existed": so.already_existed,
                            "result": so.raw,
                        }),
                    }
                }
                Err(e) => {
                    self.observe(&e);
                    match e.class() {
                        ErrorClass::Retryable => {
                            plan::retry(&self.drain.settings, &row, e.to_string())
                        }
                        ErrorClass::Permanent => Outcome::Failed {
                            error: e.to_string(),
                        },
                        ErrorClass::Throttled | ErrorClass::Systemic => Outcome::Uncharged {
                            reason: Some(e.to_string()),
                            delay: Duration::ZERO,
                        },
                    }
                }
            }
        };
        Settlement {
            id: row.id,
            outcome,
            effects,
        }
    }
}
