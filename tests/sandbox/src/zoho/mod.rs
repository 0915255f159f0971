//! Zoho CRM v8 sandbox.
