//! Kommo API v4: client, wire model, webhook deliveries and lead mapping.

pub mod budget;
pub mod client;
pub mod mapping;
pub mod model;
pub mod webhook;

pub use budget::{BudgetSettings, Lane, SharedBudget};
pub use client::{KommoClient, KommoClientOptions, KommoError, LeadsPage, Problem, MAX_PAGE_LIMIT};
pub use mapping::{
    map_contact, map_lead, map_lead_with_contact, FieldMap, MappedContact, MappedLead,
    MappingCache, MappingConfig, MappingError, StatusRule,
};
pub use model::{
    AccountTimezone, CatalogElementLink, CatalogMetadata, Contact, ContactLink, CustomFieldValue,
    EntityError, FieldValue, Lead, LeadEmbedded, Pipeline, PipelineStatus,
};
