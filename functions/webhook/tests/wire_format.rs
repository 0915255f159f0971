//! The parser against deliveries in the Kommo sandbox's wire format, for
//! every lead and contact of a generated account.

use sandbox::kommo::{KommoOptions, KommoSandbox, WebhookAction, WebhookEvent};
use shared::kommo::webhook::{parse_delivery, Action, Entity};

#[tokio::test]
async fn every_generated_lead_and_contact_parses_with_its_fields() {
    let kommo = KommoSandbox::start(KommoOptions {
        leads: 60,
        contacts: 40,
        ..KommoOptions::default()
    })
    .await
    .unwrap();
    let mut dated = 0;
    for lead in kommo.leads() {
        let body = kommo.webhook_body(&[WebhookEvent::lead_status(lead.id, 1)]);
        let d = parse_delivery(body.as_bytes()).unwrap_or_else(|e| panic!("lead {}: {e}", lead.id));
        assert_eq!(d.account.id, Some(kommo.account().id));
        assert_eq!(d.events.len(), 1);
        let e = &d.events[0];
        assert_eq!(
            (e.entity, e.action, e.id),
            (Entity::Lead, Action::Status, lead.id)
        );
        assert_eq!(e.status_id, Some(lead.status_id));
        assert_eq!(e.updated_at, Some(lead.updated_at));
        assert_eq!(
            e.name.as_deref(),
            Some(lead.name.as_str()).filter(|n| !n.is_empty())
        );
        let expected_fields = lead.custom_fields_values.as_ref().map_or(0, Vec::len);
        assert_eq!(e.custom_fields.len(), expected_fields, "lead {}", lead.id);
        // Date fields arrive without `[value]` and still read as Unix seconds.
        if let Some(f) = e.custom_field(1218176) {
            assert!(f.values[0].as_unix().is_some(), "lead {}: {f:?}", lead.id);
            dated += 1;
        }
    }
    assert!(dated > 0, "the generated account has dated leads");
    for contact in kommo.contacts() {
        let body = kommo.webhook_body(&[WebhookEvent::contact(WebhookAction::Update, contact.id)]);
        let d = parse_delivery(body.as_bytes()).unwrap();
        assert_eq!(d.events[0].entity, Entity::Contact);
        assert_eq!(d.events[0].id, contact.id);
    }
}

#[tokio::test]
async fn a_grouped_delivery_keeps_every_item() {
    let kommo = KommoSandbox::start(KommoOptions::default()).await.unwrap();
    let leads: Vec<i64> = kommo.leads().iter().take(3).map(|l| l.id).collect();
    let contact = kommo.contacts()[0].id;
    let body = kommo.webhook_body(&[
        WebhookEvent::lead(WebhookAction::Update, leads[0]),
        WebhookEvent::lead(WebhookAction::Update, leads[1]),
        WebhookEvent::lead_status(leads[1], 1),
        WebhookEvent::lead(WebhookAction::Delete, leads[2]),
        WebhookEvent::contact(WebhookAction::Update, contact),
    ]);
    let d = parse_delivery(body.as_bytes()).unwrap();
    assert_eq!(d.events.len(), 5);
    let mut fetch = vec![leads[0], leads[1]];
    fetch.sort_unstable();
    assert_eq!(d.leads_to_fetch(), fetch);
}
