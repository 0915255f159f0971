//! Changing records Zoho already holds: `PUT /crm/v8/{Contacts,Sales_Orders}`
//! updates up to 100 records by their `id`, and
//! `POST /crm/v8/Sales_Orders/upsert` updates the order whose
//! `duplicate_check_fields` match or creates one. Fields a request leaves out
//! keep their values, as in Zoho.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State as AxState,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Map, Value};

use super::{
    handlers::{
        admit, batch_status, create_order, duplicate_check_fields, field_text, record_error,
        record_object, success_details, unknown_contact,
    },
    Shared, State, ENDPOINT_CONTACTS_UPDATE, ENDPOINT_SALES_ORDERS_UPDATE,
    ENDPOINT_SALES_ORDERS_UPSERT,
};

/// Which module a call writes.
#[derive(Clone, Copy)]
pub(super) enum Module {
    Contacts,
    SalesOrders,
}

impl Module {
    fn update_endpoint(self) -> &'static str {
        match self {
            Module::Contacts => ENDPOINT_CONTACTS_UPDATE,
            Module::SalesOrders => ENDPOINT_SALES_ORDERS_UPDATE,
        }
    }
}

/// `PUT /crm/v8/{module}`: records updated by id.
pub(super) async fn update(
    AxState(shared): AxState<Arc<Shared>>,
    module: Module,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let endpoint = module.update_endpoint();
    let (_guard, _, data) = match admit(&shared, endpoint, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut s = shared.lock();
    let items: Vec<Value> = data
        .iter()
        .enumerate()
        .map(|(i, rec)| update_one(&mut s, module, i, rec))
        .collect();
    let status = batch_status(&items, StatusCode::OK);
    (status, Json(json!({"data": items}))).into_response()
}

/// One record of an update call: it must name a record of the module by id.
fn update_one(s: &mut State, module: Module, i: usize, rec: &Value) -> Value {
    let rec = match record_object(&s.faults, rec, i) {
        Ok(rec) => rec.clone(),
        Err(err) => return err,
    };
    let Some(id) = rec.get("id").and_then(field_text) else {
        return record_error(
            "MANDATORY_NOT_FOUND",
            "required field not found",
            json!({"api_name": "id", "json_path": format!("$.data[{i}].id")}),
        );
    };
    let pos = match module {
        Module::Contacts => s.contact_pos.get(&id),
        Module::SalesOrders => s.order_pos.get(&id),
    };
    let Some(pos) = pos.copied() else {
        return record_error(
            "INVALID_DATA",
            "the id given seems to be invalid",
            json!({"api_name": "id", "json_path": format!("$.data[{i}].id")}),
        );
    };
    if let Some(err) = unknown_contact(s, &rec, i) {
        return err;
    }
    merge(s, module, pos, &rec);
    json!({
        "code": "SUCCESS", "details": success_details(&id),
        "message": "record updated", "status": "success",
    })
}

/// Writes `rec`'s fields (but its id) over record `pos` and re-indexes it.
fn merge(s: &mut State, module: Module, pos: usize, rec: &Map<String, Value>) {
    let unique = s.opts.sales_order_unique_field.clone();
    let stored = match module {
        Module::Contacts => &mut s.contacts[pos],
        Module::SalesOrders => &mut s.sales_orders[pos],
    };
    for (k, v) in rec.iter().filter(|(k, _)| k.as_str() != "id") {
        stored.fields.insert(k.clone(), v.clone());
    }
    stored.writes += 1;
    let key = stored.fields.get(&unique).and_then(field_text);
    match module {
        Module::Contacts => s.index_contact(pos),
        Module::SalesOrders => {
            if let Some(key) = key {
                s.order_index.insert(key, pos);
            }
        }
    }
}

pub(super) async fn upsert_sales_orders(
    AxState(shared): AxState<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_guard, doc, data) =
        match admit(&shared, ENDPOINT_SALES_ORDERS_UPSERT, &headers, &body).await {
            Ok(v) => v,
            Err(r) => return *r,
        };
    let mut s = shared.lock();
    let default = [s.opts.sales_order_unique_field.clone()];
    let dup_fields = duplicate_check_fields(&doc, &default);
    let items: Vec<Value> = data
        .iter()
        .enumerate()
        .map(|(i, rec)| upsert_order(&mut s, i, rec, &dup_fields))
        .collect();
    let status = batch_status(&items, StatusCode::OK);
    (status, Json(json!({"data": items}))).into_response()
}

/// Updates the first order a duplicate-check field matches, else creates one.
fn upsert_order(s: &mut State, i: usize, rec: &Value, dup_fields: &[String]) -> Value {
    let obj = match record_object(&s.faults, rec, i) {
        Ok(obj) => obj.clone(),
        Err(err) => return err,
    };
    let existing = dup_fields.iter().find_map(|f| {
        let want = obj.get(f).and_then(field_text)?;
        let pos = if *f == s.opts.sales_order_unique_field {
            s.order_index.get(&want).copied()
        } else {
            s.sales_orders
                .iter()
                .position(|o| o.fields.get(f).and_then(field_text).as_deref() == Some(&want))
        }?;
        Some((pos, f.clone()))
    });
    let Some((pos, field)) = existing else {
        let mut item = create_order(s, i, rec);
        if item.get("status").and_then(Value::as_str) == Some("success") {
            item["action"] = json!("insert");
            item["duplicate_field"] = Value::Null;
        }
        return item;
    };
    if let Some(err) = unknown_contact(s, &obj, i) {
        return err;
    }
    merge(s, Module::SalesOrders, pos, &obj);
    let id = s.sales_orders[pos].id.clone();
    json!({
        "code": "SUCCESS", "duplicate_field": field, "action": "update",
        "details": success_details(&id), "message": "record updated", "status": "success",
    })
}
