//! Planning a claimed batch, without I/O: which rows fail on their own
//! fields, which contacts must be sent (a sales order needs its client's
//! contact first) and which are updated by their Zoho id, and how each row
//! settles once its record has fared.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use serde_json::{json, Value};
use uuid::Uuid;

use super::load::{BookingRow, Bookings, Clients};
use crate::{
    outbox::{
        backoff::backoff,
        store::{ClaimedRow, Effect, Outcome, Settlement},
        ENTITY_BOOKING, ENTITY_CLIENT, EVENT_CONTACT_UPDATE, EVENT_CONTACT_UPSERT,
        EVENT_SALES_ORDER_CREATE, EVENT_SALES_ORDER_UPDATE,
    },
    platform::config::OutboxSettings,
    zoho::{ErrorClass, RecordResult, ZohoError},
};

/// How one record of a batch call fared in this run (a contact, or an
/// order sent by update or upsert).
#[derive(Debug, Clone)]
pub(super) enum RecordState {
    Synced { zoho_id: String, raw: Value },
    Failed(String),
    Retry(String),
    NotSent(Option<String>),
}

impl RecordState {
    /// The state of one record of a Zoho upsert answer.
    pub fn of(r: RecordResult) -> Self {
        match r {
            RecordResult::Success { id, raw, .. } => RecordState::Synced { zoho_id: id, raw },
            RecordResult::Failure(e) => match e.class() {
                ErrorClass::Retryable => RecordState::Retry(e.describe()),
                _ => RecordState::Failed(e.describe()),
            },
        }
    }

    /// Every record's state when the whole call failed with `e`.
    pub fn of_call(e: &ZohoError) -> Self {
        let msg = e.to_string();
        match e.class() {
            ErrorClass::Retryable => RecordState::Retry(msg),
            ErrorClass::Permanent => RecordState::Failed(msg),
            ErrorClass::Throttled | ErrorClass::Systemic => RecordState::NotSent(Some(msg)),
        }
    }
}

/// How a row settles once its record fared `state` (`None`: not sent at
/// all); `effects` go with it whatever happened, `on_success` only if Zoho
/// accepted the record.
pub(super) fn settle_state(
    row: &ClaimedRow,
    state: Option<&RecordState>,
    mut effects: Vec<Effect>,
    on_success: impl FnOnce(&str) -> Effect,
    s: &OutboxSettings,
) -> Settlement {
    let outcome = match state {
        Some(RecordState::Synced { zoho_id, raw }) => {
            effects.push(on_success(zoho_id));
            Outcome::Succeeded {
                response: raw.clone(),
            }
        }
        Some(RecordState::Failed(e)) => Outcome::Failed { error: e.clone() },
        Some(RecordState::Retry(e)) => retry(s, row, e.clone()),
        Some(RecordState::NotSent(reason)) => uncharged(reason.clone(), Duration::ZERO),
        None => uncharged(None, Duration::ZERO),
    };
    settled(row, outcome, effects)
}

/// The effect that stores a contact Zoho accepted, with the fingerprint of
/// the fields it was built from.
pub(super) fn contact_synced(clients: &Clients, client_id: Uuid, zoho_id: &str) -> Effect {
    Effect::ContactId {
        client_id,
        zoho_id: zoho_id.to_string(),
        fingerprint: clients.get(&client_id).map(|c| c.fingerprint.clone()),
    }
}

/// A row settled with `outcome` and `effects`.
pub(super) fn settled(row: &ClaimedRow, outcome: Outcome, effects: Vec<Effect>) -> Settlement {
    Settlement {
        id: row.id,
        outcome,
        effects,
    }
}

/// A row that failed for good.
pub(super) fn failed(row: &ClaimedRow, error: String) -> Settlement {
    settled(row, Outcome::Failed { error }, Vec::new())
}

/// A retry after the row's backoff; the attempt stays charged.
pub(super) fn retry(s: &OutboxSettings, row: &ClaimedRow, error: String) -> Outcome {
    Outcome::Retry {
        error,
        delay: backoff(row.attempts, s.backoff_base, s.backoff_cap),
    }
}

/// Back to pending after `delay`, the attempt uncharged.
fn uncharged(reason: Option<String>, delay: Duration) -> Outcome {
    Outcome::Uncharged { reason, delay }
}

/// A claimed batch by kind; rows that cannot be dispatched already failed.
pub(super) struct Sorted {
    pub failed: Vec<Settlement>,
    pub contacts: Vec<ClaimedRow>,
    pub orders: Vec<ClaimedRow>,
}

pub(super) fn sort(rows: Vec<ClaimedRow>) -> Sorted {
    let mut out = Sorted {
        failed: Vec::new(),
        contacts: Vec::new(),
        orders: Vec::new(),
    };
    for row in rows {
        match payload_problem(&row) {
            Some(problem) => out.failed.push(failed(&row, problem)),
            None if row.entity_type == ENTITY_CLIENT => out.contacts.push(row),
            None => out.orders.push(row),
        }
    }
    out
}

/// What a batch sends, once its clients and bookings are loaded.
pub(super) struct Plan {
    /// Rows that settle without a call (bad payload, missing rows, already synced).
    pub settled: Vec<Settlement>,
    /// `contact.upsert` rows whose client exists.
    pub contact_rows: Vec<ClaimedRow>,
    /// `sales_order.create` rows and the client each needs.
    pub orders: Vec<(ClaimedRow, Uuid)>,
    /// Clients whose contact is sent this run, in first-seen order.
    pub to_send: Vec<Uuid>,
    /// Clients whose known contact is updated by its id this run.
    pub to_update: Vec<Uuid>,
}

impl Plan {
    pub fn new(sorted: Sorted, clients: &Clients, bookings: &Bookings) -> Self {
        let mut plan = Plan {
            settled: sorted.failed,
            contact_rows: Vec::new(),
            orders: Vec::new(),
            to_send: Vec::new(),
            to_update: Vec::new(),
        };
        let mut queued: HashSet<Uuid> = HashSet::new();
        for row in sorted.contacts {
            if let Some(c) = clients.get(&row.entity_id) {
                if c.in_step {
                    plan.settled.push(in_step(&row));
                    continue;
                }
                if queued.insert(row.entity_id) {
                    // A known contact is updated by its id, whatever the row
                    // says: an upsert matches on email, and a changed email
                    // would make a second contact. Without an id, upsert.
                    if c.zoho_contact_id.is_some() {
                        plan.to_update.push(row.entity_id);
                    } else {
                        plan.to_send.push(row.entity_id);
                    }
                }
                plan.contact_rows.push(row);
            } else {
                let error = format!("client {} not found", row.entity_id);
                plan.settled.push(failed(&row, error));
            }
        }
        for row in sorted.orders {
            let Some(b) = bookings.get(&row.entity_id) else {
                let error = format!("booking {} not found", row.entity_id);
                plan.settled.push(failed(&row, error));
                continue;
            };
            if b.in_step {
                plan.settled.push(in_step(&row));
                continue;
            }
            match &b.zoho_sales_order_id {
                // Already created by an earlier row: nothing to send.
                Some(existing) if row.event_type == EVENT_SALES_ORDER_CREATE => {
                    plan.settled.push(already_synced(&row, existing));
                    continue;
                }
                _ => {}
            }
            let Some(client_id) = b.client_id else {
                plan.settled
                    .push(failed(&row, "booking has no client".into()));
                continue;
            };
            let Some(c) = clients.get(&client_id) else {
                let error = format!("client {client_id} not found");
                plan.settled.push(failed(&row, error));
                continue;
            };
            if c.zoho_contact_id.is_none() && queued.insert(client_id) {
                plan.to_send.push(client_id);
            }
            plan.orders.push((row, client_id));
        }
        plan
    }
}

/// A row whose record Zoho already holds as it is now: queued from a
/// snapshot that a concurrent settle had just made stale (a reconcile beside
/// the drain), or a change undone before the drain. No call.
fn in_step(row: &ClaimedRow) -> Settlement {
    settled(
        row,
        Outcome::Succeeded {
            response: json!({"mode": "in_step"}),
        },
        Vec::new(),
    )
}

fn already_synced(row: &ClaimedRow, zoho_id: &str) -> Settlement {
    settled(
        row,
        Outcome::Succeeded {
            response: json!({"mode": "already_synced", "zoho_sales_order_id": zoho_id}),
        },
        vec![Effect::SalesOrder {
            booking_id: row.entity_id,
            zoho_id: zoho_id.to_string(),
            fingerprint: None,
        }],
    )
}

/// The contact rows, settled by how their contact fared.
pub(super) fn settle_contact_rows(
    rows: Vec<ClaimedRow>,
    contacts: &HashMap<Uuid, RecordState>,
    clients: &Clients,
    s: &OutboxSettings,
) -> Vec<Settlement> {
    rows.iter()
        .map(|row| {
            let state = contacts.get(&row.entity_id);
            let on_success = |zoho_id: &str| contact_synced(clients, row.entity_id, zoho_id);
            settle_state(row, state, Vec::new(), on_success, s)
        })
        .collect()
}

/// A sales order whose client's Zoho contact is known.
pub(super) struct ReadyOrder {
    pub row: ClaimedRow,
    pub booking: BookingRow,
    pub contact_id: String,
    /// The contact id to store, when the contact was synced in this run.
    pub contact_effect: Option<Effect>,
}

/// Orders whose contact is known are ready to send; the others settle here.
pub(super) fn route_orders(
    orders: Vec<(ClaimedRow, Uuid)>,
    clients: &Clients,
    bookings: &Bookings,
    contacts: &HashMap<Uuid, RecordState>,
    s: &OutboxSettings,
) -> (Vec<ReadyOrder>, Vec<Settlement>) {
    let (mut ready, mut out) = (Vec::new(), Vec::new());
    for (row, client_id) in orders {
        let known = clients
            .get(&client_id)
            .and_then(|c| c.zoho_contact_id.clone());
        let Some(booking) = bookings.get(&row.entity_id).cloned() else {
            out.push(failed(&row, format!("booking {} not found", row.entity_id)));
            continue;
        };
        let contact = match (known, contacts.get(&client_id)) {
            (Some(id), _) => Ok((id, None)),
            (None, Some(RecordState::Synced { zoho_id, .. })) => {
                let effect = contact_synced(clients, client_id, zoho_id);
                Ok((zoho_id.clone(), Some(effect)))
            }
            (None, Some(RecordState::Failed(e))) => Err(failed(
                &row,
                format!("the client's contact could not be synced: {e}"),
            )),
            (None, Some(RecordState::Retry(e))) => {
                let o = retry(s, &row, format!("the client's contact: {e}"));
                Err(settled(&row, o, vec![]))
            }
            (None, Some(RecordState::NotSent(reason))) => Err(settled(
                &row,
                uncharged(reason.clone(), Duration::ZERO),
                vec![],
            )),
            (None, None) => {
                let reason = Some("waiting for the client's Zoho contact".into());
                Err(settled(&row, uncharged(reason, s.defer), vec![]))
            }
        };
        match contact {
            Ok((contact_id, contact_effect)) => ready.push(ReadyOrder {
                row,
                booking,
                contact_id,
                contact_effect,
            }),
            Err(settlement) => out.push(settlement),
        }
    }
    (ready, out)
}

/// Why a row cannot be dispatched at all, from its own fields.
fn payload_problem(row: &ClaimedRow) -> Option<String> {
    let (entity, key) = match row.event_type.as_str() {
        EVENT_CONTACT_UPSERT | EVENT_CONTACT_UPDATE => (ENTITY_CLIENT, "client_id"),
        EVENT_SALES_ORDER_CREATE | EVENT_SALES_ORDER_UPDATE => (ENTITY_BOOKING, "booking_id"),
        other => return Some(format!("unknown event type `{other}`")),
    };
    if row.entity_type != entity {
        return Some(format!(
            "{} rows must have entity_type `{entity}`, not `{}`",
            row.event_type, row.entity_type
        ));
    }
    if !row.payload.is_object() {
        return Some("payload is not a JSON object".into());
    }
    match row.payload.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) if id == row.entity_id => None,
            Some(_) => Some(format!("payload {key} does not match entity_id")),
            None => Some(format!("payload {key} is not a UUID")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_checked_against_the_row() {
        let id = Uuid::new_v4();
        let mut row = ClaimedRow {
            id: Uuid::new_v4(),
            entity_type: "booking".into(),
            entity_id: id,
            event_type: EVENT_SALES_ORDER_CREATE.into(),
            payload: json!({"booking_id": id, "client_id": Uuid::new_v4()}),
            attempts: 1,
        };
        assert_eq!(payload_problem(&row), None);
        row.payload = json!({"booking_id": Uuid::new_v4()});
        assert!(payload_problem(&row).unwrap().contains("does not match"));
        row.payload = json!({"booking_id": 42});
        assert!(payload_problem(&row).unwrap().contains("not a UUID"));
        row.event_type = "invoice.create".into();
        assert!(payload_problem(&row)
            .unwrap()
            .contains("unknown event type"));
        row.event_type = EVENT_CONTACT_UPSERT.into();
        assert!(payload_problem(&row)
            .unwrap()
            .contains("entity_type `client`"));
    }
}
