-- Core schema of the Kommo -> ERP -> Zoho integration.
-- Table and column names follow the internal specs (ingestion/outbox and full refresh).

-- Staff and the Kommo responsible-user map ------------------------------------

CREATE TABLE staff_accounts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    role        text NOT NULL DEFAULT 'sales',
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kommo_user_map (
    kommo_user_id     bigint PRIMARY KEY,
    staff_account_id  uuid NOT NULL REFERENCES staff_accounts (id),
    kommo_user_name   text,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Clients, vehicles, bookings -------------------------------------------------

CREATE TABLE clients (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kommo_contact_id  bigint UNIQUE,
    zoho_contact_id   text UNIQUE,
    full_name         text NOT NULL DEFAULT '',
    first_name        text,
    last_name         text,
    email             text,
    phone             text,
    -- Digits only, so "+7 (900) 123-45-67" and "79001234567" match.
    phone_normalized  text,
    documents         jsonb NOT NULL DEFAULT '[]'::jsonb,
    kommo_updated_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clients_email_lower_idx ON clients (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX clients_phone_normalized_idx ON clients (phone_normalized) WHERE phone_normalized IS NOT NULL;

CREATE TABLE vehicles (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kommo_vehicle_id  bigint UNIQUE,
    name              text NOT NULL DEFAULT '',
    plate             text,
    is_active         boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bookings (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- 'kommo:' || lead id for Kommo bookings; the idempotency key of ingestion.
    source_payload_id    text UNIQUE,
    external_code        text UNIQUE,
    channel              text NOT NULL CHECK (channel IN ('Kommo', 'manual')),
    created_by           text NOT NULL,
    manual_created_by    text,
    owner_id             uuid REFERENCES staff_accounts (id),
    client_id            uuid REFERENCES clients (id),
    kommo_lead_id        bigint,
    kommo_pipeline_id    bigint,
    kommo_status_id      bigint,
    status               text NOT NULL DEFAULT 'requested',
    -- Marketing source, from the Kommo source enum (field 823206) or the manual form.
    source               text,
    title                text,
    start_at             timestamptz,
    end_at               timestamptz,
    vehicle_id           uuid REFERENCES vehicles (id),
    is_active            boolean NOT NULL DEFAULT true,
    total_amount         numeric(14, 2),
    currency             text,
    notes                text,
    zoho_sales_order_id  text UNIQUE,
    zoho_sync_status     text NOT NULL DEFAULT 'pending'
                         CHECK (zoho_sync_status IN ('pending', 'synced', 'failed', 'not_required')),
    -- The Kommo `updated_at` last applied: an older delivery never overwrites a newer one.
    kommo_updated_at     timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (channel <> 'manual' OR manual_created_by IS NOT NULL)
);
CREATE INDEX bookings_kommo_lead_id_idx ON bookings (kommo_lead_id) WHERE kommo_lead_id IS NOT NULL;
CREATE INDEX bookings_client_id_idx ON bookings (client_id);
CREATE INDEX bookings_calendar_idx ON bookings (start_at) WHERE is_active;

CREATE TABLE booking_vehicles (
    booking_id  uuid NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    vehicle_id  uuid NOT NULL REFERENCES vehicles (id),
    "primary"   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (booking_id, vehicle_id)
);
CREATE UNIQUE INDEX booking_vehicles_one_primary_idx ON booking_vehicles (booking_id) WHERE "primary";

CREATE TABLE booking_invoices (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    booking_id  uuid NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    amount      numeric(14, 2) NOT NULL,
    currency    text NOT NULL DEFAULT 'USD',
    status      text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'issued', 'paid', 'void')),
    issued_at   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX booking_invoices_booking_idx ON booking_invoices (booking_id);

CREATE TABLE sales_leads (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The Kommo lead id as text for Kommo leads.
    lead_code          text NOT NULL UNIQUE,
    kommo_lead_id      bigint UNIQUE,
    client_id          uuid REFERENCES clients (id),
    name               text,
    stage_id           bigint,
    pipeline_id        bigint,
    value_amount       numeric(14, 2),
    owner_id           uuid REFERENCES staff_accounts (id),
    expected_close_at  timestamptz,
    -- Origin system ('Kommo', 'manual'); the marketing source is `lead_source`.
    source             text NOT NULL DEFAULT 'Kommo',
    lead_source        text,
    archived_at        timestamptz,
    kommo_updated_at   timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE calendar_events (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title       text NOT NULL,
    start_at    timestamptz NOT NULL,
    end_at      timestamptz NOT NULL,
    vehicle_id  uuid REFERENCES vehicles (id),
    booking_id  uuid REFERENCES bookings (id) ON DELETE SET NULL,
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (end_at >= start_at)
);

-- The calendar reads manual events and active, dated Kommo bookings together.
CREATE VIEW calendar_events_expanded AS
SELECT e.id,
       'manual'::text AS origin,
       e.title,
       e.start_at,
       e.end_at,
       e.vehicle_id,
       e.booking_id
  FROM calendar_events e
UNION ALL
SELECT b.id,
       'kommo'::text AS origin,
       coalesce(b.title, 'Kommo lead ' || b.kommo_lead_id) AS title,
       coalesce(b.start_at, b.end_at) AS start_at,
       coalesce(b.end_at, b.start_at) AS end_at,
       b.vehicle_id,
       b.id AS booking_id
  FROM bookings b
 WHERE b.channel = 'Kommo'
   AND b.is_active
   AND (b.start_at IS NOT NULL OR b.end_at IS NOT NULL);

-- Feature flags: the kill switches -------------------------------------------

CREATE TABLE system_feature_flags (
    key          text PRIMARY KEY,
    enabled      boolean NOT NULL DEFAULT false,
    description  text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO system_feature_flags (key, enabled, description) VALUES
    ('enableKommoLive', false, 'Kommo ingestion: webhooks are processed and full refresh may run'),
    ('enableZohoLive', false, 'Zoho outbox: rows are sent to Zoho instead of being stubbed'),
    ('enableSlackAlerts', false, 'Slack alerts for failed or suspicious full-refresh runs');

-- Outbox of Zoho work ---------------------------------------------------------

CREATE TABLE integrations_outbox (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    entity_type    text NOT NULL CHECK (entity_type IN ('client', 'booking', 'lead')),
    entity_id      uuid NOT NULL,
    target_system  text NOT NULL CHECK (target_system IN ('kommo', 'zoho')),
    event_type     text NOT NULL,
    payload        jsonb NOT NULL DEFAULT '{}'::jsonb,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processing', 'succeeded', 'failed')),
    attempts       integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error     text,
    next_run_at    timestamptz NOT NULL DEFAULT now(),
    -- Lease of a claimed row: past it, a row left in 'processing' is claimable again.
    locked_until   timestamptz,
    locked_by      text,
    -- One live row per (event, entity): re-enqueueing the same work is a no-op.
    dedupe_key     text NOT NULL,
    last_response  jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX integrations_outbox_live_dedupe_idx
    ON integrations_outbox (dedupe_key) WHERE status IN ('pending', 'processing');
CREATE INDEX integrations_outbox_claimable_idx
    ON integrations_outbox (next_run_at, created_at) WHERE status = 'pending';
CREATE INDEX integrations_outbox_leased_idx
    ON integrations_outbox (locked_until) WHERE status = 'processing';
CREATE INDEX integrations_outbox_entity_idx ON integrations_outbox (entity_type, entity_id);

-- Kommo deliveries and imports ------------------------------------------------

CREATE TABLE kommo_webhook_events (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- sha256 of the raw body: a re-delivery of the same body is a duplicate.
    dedupe_key       text NOT NULL UNIQUE,
    account_id       bigint,
    raw_payload      text NOT NULL,
    parsed_payload   jsonb,
    status           text NOT NULL DEFAULT 'received'
                     CHECK (status IN ('received', 'processing', 'processed', 'failed', 'rejected')),
    attempts         integer NOT NULL DEFAULT 0,
    duplicate_count  integer NOT NULL DEFAULT 0,
    error            text,
    sqs_message_id   text,
    received_at      timestamptz NOT NULL DEFAULT now(),
    processed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kommo_webhook_events_status_idx ON kommo_webhook_events (status, received_at);

CREATE TABLE kommo_import_runs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    triggered_by        text,
    status              text NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'needs_review')),
    year                integer NOT NULL,
    phase               text NOT NULL DEFAULT 'queued',
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    leads_count         integer NOT NULL DEFAULT 0,
    contacts_count      integer NOT NULL DEFAULT 0,
    vehicles_count      integer NOT NULL DEFAULT 0,
    pages_fetched       integer NOT NULL DEFAULT 0,
    -- Leads count of the previous successful run, for the >30% drop guard.
    last_success_count  integer,
    -- Where fetching stopped, so a continuation resumes there.
    checkpoint          jsonb,
    http_status         integer,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- At most one run is queued or running at a time.
CREATE UNIQUE INDEX kommo_import_runs_one_active_idx
    ON kommo_import_runs ((true)) WHERE status IN ('queued', 'running');
CREATE INDEX kommo_import_runs_started_idx ON kommo_import_runs (started_at DESC);

CREATE TABLE stg_kommo_leads (
    run_id               uuid NOT NULL REFERENCES kommo_import_runs (id) ON DELETE CASCADE,
    lead_id              bigint NOT NULL,
    payload              jsonb NOT NULL,
    contact_id           bigint,
    vehicle_enum_id      bigint,
    source_enum_id       bigint,
    created_at           timestamptz,
    updated_at           timestamptz,
    PRIMARY KEY (run_id, lead_id)
);

CREATE TABLE stg_kommo_contacts (
    run_id      uuid NOT NULL REFERENCES kommo_import_runs (id) ON DELETE CASCADE,
    contact_id  bigint NOT NULL,
    payload     jsonb NOT NULL,
    PRIMARY KEY (run_id, contact_id)
);

CREATE TABLE stg_kommo_booking_vehicles (
    run_id           uuid NOT NULL REFERENCES kommo_import_runs (id) ON DELETE CASCADE,
    lead_id          bigint NOT NULL,
    vehicle_enum_id  bigint NOT NULL,
    PRIMARY KEY (run_id, lead_id, vehicle_enum_id)
);

-- Mapping that operators can change without a deploy --------------------------

CREATE TABLE kommo_status_map (
    status_id       bigint PRIMARY KEY,
    label           text NOT NULL,
    -- bookings.status for this Kommo status.
    booking_status  text NOT NULL DEFAULT 'requested',
    -- Excluded statuses stay in sales_leads only: no booking, no calendar entry.
    excluded        boolean NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO kommo_status_map (status_id, label, booking_status, excluded) VALUES
    (79790631, 'Request bot answering', 'excluded', true),
    (91703923, 'Follow up', 'excluded', true),
    (143, 'Closed - lost', 'cancelled', true),
    (142, 'Closed - won', 'completed', false);

CREATE TABLE kommo_field_map (
    field_key    text PRIMARY KEY
                 CHECK (field_key IN ('delivery_at', 'collect_at', 'vehicle_enum', 'source_enum')),
    field_id     bigint NOT NULL,
    description  text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO kommo_field_map (field_key, field_id, description) VALUES
    ('delivery_at', 1218176, 'Date/Time Delivery: bookings.start_at'),
    ('collect_at', 1218178, 'Date/Time Collect: bookings.end_at'),
    ('vehicle_enum', 1234163, 'Vehicle enum: vehicles.kommo_vehicle_id'),
    ('source_enum', 823206, 'Lead source enum: bookings.source');

-- One Zoho access token shared by every Lambda container ----------------------

CREATE TABLE zoho_oauth_tokens (
    id               text PRIMARY KEY DEFAULT 'default',
    access_token     text,
    api_domain       text,
    expires_at       timestamptz,
    refreshed_at     timestamptz,
    refresh_count    integer NOT NULL DEFAULT 0,
    -- Set when Zoho throttles the token endpoint: no refresh until then.
    throttled_until  timestamptz,
    last_error       text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO zoho_oauth_tokens (id) VALUES ('default');
