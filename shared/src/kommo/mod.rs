//! Kommo API v4: client, wire model, webhook deliveries and lead mapping.

pub mod client;
pub mod model;

pub use client::{KommoClient, KommoClientOptions, KommoError, LeadsPage, Problem, MAX_PAGE_LIMIT};
pub use model::{
    AccountTimezone, CatalogElementLink, CatalogMetadata, Contact, ContactLink, CustomFieldValue,
    EntityError, FieldValue, Lead, LeadEmbedded,
};
