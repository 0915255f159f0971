//! The lead mapping with its configuration read from the real mapping tables,
//! applied to leads fetched from the Kommo sandbox.

use std::time::Duration;

use sandbox::kommo::{data, KommoOptions, KommoSandbox};
use shared::{
    kommo::{map_lead, map_lead_with_contact, KommoClient, KommoClientOptions, MappingConfig},
    platform::secrets::Redacted,
};
use testkit::TestDb;
use uuid::Uuid;

#[tokio::test]
async fn config_is_loaded_from_the_mapping_tables() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let staff: Uuid = client
        .query_one(
            "INSERT INTO staff_accounts (email, full_name) VALUES ('anna@example.test', 'Anna') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO kommo_user_map (kommo_user_id, staff_account_id) VALUES (504141, $1)",
            &[&staff],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO kommo_status_map (status_id, label, booking_status) VALUES (67548619, 'Confirmed', 'confirmed')",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE kommo_field_map SET field_id = 4242 WHERE field_key = 'source_enum'",
            &[],
        )
        .await
        .unwrap();

    let cfg = MappingConfig::load(&client).await.unwrap();
    assert_eq!(cfg.fields.delivery_at, 1218176);
    assert_eq!(cfg.fields.collect_at, 1218178);
    assert_eq!(cfg.fields.vehicle_enum, 1234163);
    assert_eq!(cfg.fields.source_enum, 4242);
    assert_eq!(cfg.users.get(&504141), Some(&staff));
    assert_eq!(cfg.status(67548619), ("confirmed".to_string(), false));
    assert_eq!(cfg.status(142), ("completed".to_string(), false));
    for excluded in [79790631, 91703923, 143] {
        assert!(
            cfg.status(excluded).1,
            "{excluded} is excluded by the seeded rows"
        );
    }

    // Inside a transaction too, as the processor and the swap load it.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let again = MappingConfig::load(&tx).await.unwrap();
    assert_eq!(again.statuses.len(), cfg.statuses.len());
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn every_generated_lead_maps_with_date_fallbacks() {
    let db = TestDb::new().await;
    let cfg = MappingConfig::load(&db.client().await).await.unwrap();
    let kommo = KommoSandbox::start(KommoOptions {
        seed: 3,
        leads: 300,
        contacts: 120,
        year: Some(2025),
        ..KommoOptions::default()
    })
    .await
    .unwrap();
    let api = KommoClient::with_token(
        &kommo.base_url(),
        Redacted::new(kommo.token()),
        KommoClientOptions {
            rate_per_second: 1000,
            retry_min_delay: Duration::from_millis(5),
            ..KommoClientOptions::default()
        },
    )
    .unwrap();
    let ids: Vec<i64> = kommo.leads().iter().map(|l| l.id).collect();
    let leads = api.leads_by_ids(&ids).await.unwrap();
    assert_eq!(leads.len(), ids.len());
    let contact_ids: Vec<i64> = leads.iter().filter_map(|l| l.main_contact_id()).collect();
    let contacts = api.contacts_by_ids(&contact_ids).await.unwrap();

    for lead in &leads {
        let stored = kommo.lead(lead.id).unwrap();
        let contact = contacts
            .iter()
            .find(|c| Some(c.id) == lead.main_contact_id());
        let (m, mc) = map_lead_with_contact(lead, contact, &cfg).unwrap();
        assert_eq!(m, map_lead(lead, &cfg).unwrap());
        let secs = |f: i64| stored.field(f).and_then(|f| f.values[0]["value"].as_i64());
        let (delivery, collect) = (secs(data::FIELD_DELIVERY), secs(data::FIELD_COLLECT));
        assert_eq!(m.start_at.map(|d| d.timestamp()), delivery.or(collect));
        assert_eq!(m.end_at.map(|d| d.timestamp()), collect.or(delivery));
        assert_eq!(
            m.excluded,
            [79790631, 91703923, 143].contains(&stored.status_id),
            "lead {} in status {}",
            lead.id,
            stored.status_id
        );
        let vehicle = stored
            .field(data::FIELD_VEHICLE)
            .map(|f| f.values[0]["enum_id"].as_i64());
        assert_eq!(m.vehicle_enum_id, vehicle.flatten());
        assert_eq!(m.main_contact_id, stored.contact_ids.first().copied());
        if let Some(mc) = mc {
            assert!(!mc.full_name.is_empty());
            if let Some(n) = &mc.phone_normalized {
                assert!(n.chars().all(|c| c.is_ascii_digit()));
            }
        }
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }
}
