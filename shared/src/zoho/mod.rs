//! Zoho CRM v8: OAuth token shared through Postgres, contacts upsert, sales orders.
