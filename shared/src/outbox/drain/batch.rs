//! One claimed batch sent to Zoho: contacts first (upserted, or updated by
//! their id), then the sales orders that needed them (created, updated by
//! id, or upserted on the booking-id field), always in calls of at most 100,
//! `zoho_concurrency` at a time.
//! The first throttle, 429, broken credential or near deadline stops every
//! call that has not started; its rows are handed back uncharged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::{stream, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    load::{self, Clients},
    plan::{self, Plan, ReadyOrder, RecordState},
    records::{contact_record, order_record},
    Drain, StopReason,
};
use crate::{
    outbox::{
        store::{ClaimedRow, Effect, Settlement},
        OutboxError, EVENT_SALES_ORDER_UPDATE,
    },
    platform::{config::ZohoSettings, deadline::Deadline},
    zoho::{ErrorClass, RecordResult, ZohoClient, ZohoError, MAX_RECORDS_PER_CALL},
};

const MODULE_CONTACTS: &str = "Contacts";
const MODULE_SALES_ORDERS: &str = "Sales_Orders";

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

        let mut contacts = self.send_contacts(&plan.to_send, &clients, false).await;
        contacts.extend(self.send_contacts(&plan.to_update, &clients, true).await);
        self.check_contact_conflicts(&mut contacts).await?;
        let settings = &self.drain.settings;
        out.extend(plan::settle_contact_rows(
            plan.contact_rows,
            &contacts,
            &clients,
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
        out.extend(self.send_orders(ready).await);
        Ok(out)
    }

    /// Runs one batch call of `n` records unless the batch must hold; the
    /// state of each record, in request order.
    async fn call_chunk(
        &self,
        n: usize,
        call: impl std::future::Future<Output = Result<Vec<RecordResult>, ZohoError>>,
    ) -> Vec<RecordState> {
        if let Some(reason) = self.hold() {
            return vec![RecordState::NotSent(Some(reason)); n];
        }
        match call.await {
            Ok(results) => results.into_iter().map(RecordState::of).collect(),
            Err(e) => {
                self.observe(&e);
                vec![RecordState::of_call(&e); n]
            }
        }
    }

    /// Sends contacts in calls of at most 100, `zoho_concurrency` at a time:
    /// upserted, or (`by_id`) updated by their known Zoho id.
    async fn send_contacts(
        &self,
        clients_to_send: &[Uuid],
        clients: &Clients,
        by_id: bool,
    ) -> HashMap<Uuid, RecordState> {
        let key_field = self.settings().contact_key_field.clone();
        let record = |id: &Uuid| {
            let c = clients.get(id)?;
            let mut rec = contact_record(*id, c, key_field.as_deref());
            if by_id {
                rec["id"] = json!(c.zoho_contact_id.clone()?);
            }
            Some((*id, rec))
        };
        let chunks: Vec<Vec<(Uuid, Value)>> = clients_to_send
            .chunks(MAX_RECORDS_PER_CALL)
            .map(|chunk| chunk.iter().filter_map(record).collect())
            .collect();
        let concurrency = self.drain.settings.zoho_concurrency.max(1);
        let per_chunk: Vec<Vec<(Uuid, RecordState)>> = stream::iter(chunks)
            .map(|chunk| self.send_contact_chunk(chunk, by_id))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        per_chunk.into_iter().flatten().collect()
    }

    /// One contacts call; a failed call gives every contact in it the same state.
    async fn send_contact_chunk(
        &self,
        chunk: Vec<(Uuid, Value)>,
        by_id: bool,
    ) -> Vec<(Uuid, RecordState)> {
        let records: Vec<Value> = chunk.iter().map(|(_, r)| r.clone()).collect();
        let call = async {
            if by_id {
                self.zoho.update_records(MODULE_CONTACTS, &records).await
            } else {
                self.zoho.upsert_contacts(&records).await
            }
        };
        let states = self.call_chunk(records.len(), call).await;
        chunk.into_iter().map(|(id, _)| id).zip(states).collect()
    }

    /// Orders, 100 to a call, `zoho_concurrency` calls at a time: new ones
    /// created, changed ones updated by their Zoho id, or upserted on the
    /// booking-id field when the id is unknown.
    async fn send_orders(&self, orders: Vec<ReadyOrder>) -> Vec<Settlement> {
        let mut groups: [Vec<ReadyOrder>; 3] = Default::default();
        for o in orders {
            groups[OrderCall::of(&o) as usize].push(o);
        }
        let mut chunks: Vec<Vec<ReadyOrder>> = Vec::new();
        for group in groups {
            let mut rest = group.into_iter().peekable();
            while rest.peek().is_some() {
                chunks.push(rest.by_ref().take(MAX_RECORDS_PER_CALL).collect());
            }
        }
        let concurrency = self.drain.settings.zoho_concurrency.max(1);
        let per_chunk: Vec<Vec<Settlement>> = stream::iter(chunks)
            .map(|chunk| self.send_order_chunk(chunk))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        per_chunk.into_iter().flatten().collect()
    }

    /// One call of orders that all go the same way ([`OrderCall`]).
    async fn send_order_chunk(&self, chunk: Vec<ReadyOrder>) -> Vec<Settlement> {
        let settings = self.settings();
        let how = chunk.first().map_or(OrderCall::Create, OrderCall::of);
        let records: Vec<Value> = chunk
            .iter()
            .map(|o| {
                let mut rec = order_record(o.row.entity_id, &o.contact_id, &o.booking, settings);
                if let (OrderCall::UpdateById, Some(id)) = (how, &o.booking.zoho_sales_order_id) {
                    rec["id"] = json!(id);
                }
                rec
            })
            .collect();
        let call = async {
            match how {
                OrderCall::Create => self.zoho.create_sales_orders(&records).await,
                OrderCall::UpdateById => {
                    self.zoho
                        .update_records(MODULE_SALES_ORDERS, &records)
                        .await
                }
                OrderCall::UpsertByKey => {
                    let key = [settings.sales_order_unique_field.clone()];
                    let module = MODULE_SALES_ORDERS;
                    self.zoho.upsert_records(module, &records, &key).await
                }
            }
        };
        let states = self.call_chunk(records.len(), call).await;
        let s = &self.drain.settings;
        chunk
            .into_iter()
            .zip(states)
            .map(|(o, state)| {
                let state = match (how, state) {
                    (OrderCall::Create, RecordState::Synced { zoho_id, raw }) => {
                        created(zoho_id, raw)
                    }
                    (_, other) => other,
                };
                let booking_id = o.row.entity_id;
                let fingerprint = Some(o.booking.fingerprint.clone());
                let on_success = |zoho_id: &str| Effect::SalesOrder {
                    booking_id,
                    zoho_id: zoho_id.to_string(),
                    fingerprint,
                };
                let effects = o.contact_effect.into_iter().collect();
                plan::settle_state(&o.row, Some(&state), effects, on_success, s)
            })
            .collect()
    }

    /// `clients.zoho_contact_id` is unique: a Zoho contact already linked to
    /// another client (same email, say) fails this row instead of the batch.
    async fn check_contact_conflicts(
        &self,
        contacts: &mut HashMap<Uuid, RecordState>,
    ) -> Result<(), OutboxError> {
        let mut synced: Vec<(Uuid, String)> = contacts
            .iter()
            .filter_map(|(c, s)| match s {
                RecordState::Synced { zoho_id, .. } => Some((*c, zoho_id.clone())),
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
                        RecordState::Failed(format!(
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
}

/// How an order goes to Zoho; the groups a batch's calls are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderCall {
    Create = 0,
    UpdateById = 1,
    UpsertByKey = 2,
}

impl OrderCall {
    fn of(o: &ReadyOrder) -> Self {
        match (o.row.event_type.as_str(), &o.booking.zoho_sales_order_id) {
            (EVENT_SALES_ORDER_UPDATE, Some(_)) => OrderCall::UpdateById,
            (EVENT_SALES_ORDER_UPDATE, None) => OrderCall::UpsertByKey,
            _ => OrderCall::Create,
        }
    }
}

/// A created order's response as the row keeps it: its id, and whether an
/// earlier attempt had created it (`DUPLICATE_DATA` on the unique field).
fn created(zoho_id: String, raw: Value) -> RecordState {
    let already_existed = raw.get("code").and_then(Value::as_str) == Some("DUPLICATE_DATA");
    RecordState::Synced {
        raw: json!({
            "zoho_sales_order_id": zoho_id,
            "already_existed": already_existed,
            "result": raw,
        }),
        zoho_id,
    }
}
