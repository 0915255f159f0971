-- Full refresh: mapped values in staging, and outbox suppression for the swap.
--
-- The lead mapping (status map, excluded statuses, dates with fallback,
-- source enum, owner map) runs in Rust, shared with the webhook processor.
-- Its results are staged next to the raw payload, so the swap is plain
-- set-based SQL and never re-implements the mapping.

ALTER TABLE stg_kommo_leads
    ADD COLUMN name                 text,
    ADD COLUMN status_id            bigint,
    ADD COLUMN pipeline_id          bigint,
    -- Kommo's price is an integer; numeric is not needed before the swap.
    ADD COLUMN price                bigint,
    ADD COLUMN responsible_user_id  bigint,
    ADD COLUMN owner_id             uuid,
    ADD COLUMN booking_status       text,
    ADD COLUMN excluded             boolean NOT NULL DEFAULT false,
    ADD COLUMN start_at             timestamptz,
    ADD COLUMN end_at               timestamptz,
    ADD COLUMN lead_source          text,
    ADD COLUMN closed_at            timestamptz;

ALTER TABLE stg_kommo_contacts
    ADD COLUMN full_name         text,
    ADD COLUMN first_name        text,
    ADD COLUMN last_name         text,
    ADD COLUMN email             text,
    ADD COLUMN phone             text,
    ADD COLUMN phone_normalized  text,
    ADD COLUMN updated_at        timestamptz;

ALTER TABLE stg_kommo_booking_vehicles
    -- The enum option's label, so a vehicle created on the fly gets a name.
    ADD COLUMN vehicle_name  text,
    ADD COLUMN is_primary    boolean NOT NULL DEFAULT true;

-- The swap sets `integrations.outbox_suppressed = on` for its transaction
-- only (set_config(..., true)). Any insert into the outbox made in that
-- transaction, by application code or by a future trigger on bookings or
-- clients, is dropped: a full refresh must never enqueue Zoho work.
CREATE FUNCTION integrations_outbox_suppress() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('integrations.outbox_suppressed', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER integrations_outbox_suppress
    BEFORE INSERT ON integrations_outbox
    FOR EACH ROW EXECUTE FUNCTION integrations_outbox_suppress();

-- The drop guard and the staging cleanup look up successful runs by year.
CREATE INDEX kommo_import_runs_succeeded_idx
    ON kommo_import_runs (year, finished_at DESC) WHERE status = 'succeeded';
