//! The Zoho records a drain sends: a client's Contacts record and a
//! booking's Sales_Orders record, for a create, an upsert or an update alike.
//! Each is built only from the fields its fingerprint covers (migration
//! V10's `zoho_contact_fingerprint`, `zoho_order_fingerprint`): a field added
//! here must be added there, or its changes will not reach Zoho.

use serde_json::{json, Value};
use uuid::Uuid;

use super::load::{BookingRow, ClientRow};
use crate::platform::{
    config::ZohoSettings,
    text::{clamp, non_empty},
};

/// The Contacts record of a client. Zoho requires `Last_Name`; without any
/// name Zoho's `MANDATORY_NOT_FOUND` fails the row with a clear message.
pub(super) fn contact_record(id: Uuid, c: &ClientRow, key_field: Option<&str>) -> Value {
    let mut rec = serde_json::Map::new();
    let full = c.full_name.trim();
    let first = non_empty(c.first_name.as_deref());
    let (first, last) = match non_empty(c.last_name.as_deref()) {
        Some(last) => (first, Some(last)),
        None => match full.rsplit_once(' ') {
            Some((f, l)) => (
                first.or_else(|| Some(f.trim().to_string())),
                Some(l.to_string()),
            ),
            None if !full.is_empty() => (first, Some(full.to_string())),
            None => (first, None),
        },
    };
    if let Some(l) = last {
        rec.insert("Last_Name".into(), json!(clamp(&l, 80)));
    }
    if let Some(f) = first.filter(|f| !f.is_empty()) {
        rec.insert("First_Name".into(), json!(clamp(&f, 40)));
    }
    if let Some(e) = non_empty(c.email.as_deref()) {
        rec.insert("Email".into(), json!(e));
    }
    if let Some(p) = non_empty(c.phone.as_deref()) {
        rec.insert("Phone".into(), json!(p));
    }
    if let Some(k) = key_field {
        rec.insert(k.to_string(), json!(id.to_string()));
    }
    Value::Object(rec)
}

/// The Sales_Orders record; the unique field holds the booking id, so a
/// retry after an ambiguous failure meets `DUPLICATE_DATA` instead of
/// creating a second order.
pub(super) fn order_record(
    booking_id: Uuid,
    contact_id: &str,
    b: &BookingRow,
    s: &ZohoSettings,
) -> Value {
    let subject = non_empty(b.title.as_deref())
        .or_else(|| non_empty(b.external_code.as_deref()).map(|c| format!("Booking {c}")))
        .unwrap_or_else(|| format!("Booking {booking_id}"));
    let mut rec = json!({
        "Subject": clamp(&subject, 255),
        "Contact_Name": {"id": contact_id},
        "Ordered_Items": [{
            "Product_Name": {"id": s.product_id.clone().unwrap_or_default()},
            "Quantity": 1,
            "List_Price": b.total.unwrap_or(0.0),
        }],
    });
    rec[s.sales_order_unique_field.as_str()] = json!(booking_id.to_string());
    if let Some(cur) = non_empty(b.currency.as_deref()) {
        rec["Currency"] = json!(cur);
    }
    rec["Status"] = json!(order_status(b));
    rec[FIELD_ERP_STATUS] = json!(b.status);
    rec[FIELD_START] = json!(b.start_at);
    rec[FIELD_END] = json!(b.end_at);
    rec
}

/// Sales_Orders fields the org adds for bookings (custom fields): the ERP
/// status and the booking's dates. Empty dates are sent as null, so a
/// cleared date clears Zoho's too.
pub(super) const FIELD_ERP_STATUS: &str = "ERP_Status";
pub(super) const FIELD_START: &str = "Booking_Start";
pub(super) const FIELD_END: &str = "Booking_End";

/// Zoho's own order status: a cancelled or deactivated booking (Kommo delete,
/// excluded status, full-refresh soft delete) cancels its order, which is
/// never deleted.
pub(super) fn order_status(b: &BookingRow) -> &'static str {
    let cancelled = matches!(
        b.status.to_ascii_lowercase().as_str(),
        "cancelled" | "canceled"
    );
    if !b.is_active || cancelled {
        "Cancelled"
    } else {
        "Created"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(first: Option<&str>, last: Option<&str>, full: &str) -> ClientRow {
        ClientRow {
            first_name: first.map(Into::into),
            last_name: last.map(Into::into),
            full_name: full.into(),
            email: Some(" anna@example.com ".into()),
            phone: None,
            zoho_contact_id: None,
            fingerprint: String::new(),
            in_step: false,
        }
    }

    #[test]
    fn contact_records_always_try_to_carry_a_last_name() {
        let id = Uuid::new_v4();
        let r = contact_record(
            id,
            &client(Some("Anna"), Some("Kingsley"), ""),
            Some("ERP_Client_Id"),
        );
        assert_eq!(r["Last_Name"], "Kingsley");
        assert_eq!(r["First_Name"], "Anna");
        assert_eq!(r["Email"], "anna@example.com");
        assert_eq!(r["ERP_Client_Id"], id.to_string());
        let r = contact_record(id, &client(None, None, "Maria del Carmen Ruiz"), None);
        assert_eq!(r["Last_Name"], "Ruiz");
        assert_eq!(r["First_Name"], "Maria del Carmen");
        let r = contact_record(id, &client(None, None, "Cher"), None);
        assert_eq!(r["Last_Name"], "Cher");
        let r = contact_record(id, &client(None, None, "  "), None);
        assert!(r.get("Last_Name").is_none());
    }
}
