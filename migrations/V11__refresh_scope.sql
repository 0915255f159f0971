-- Full refresh, safe on a real account (issue 16 §1, §3, §4): a run touches
-- only the leads created inside its year bounds, respects Kommo deletes it
-- could not see, and names the statuses nobody has mapped.

-- Kommo's own creation time of a lead: the swap's soft delete is limited to
-- the leads created inside the run's bounds, and `created_at` is when the
-- ERP row was written (a webhook's now(), or the refresh's copy).
ALTER TABLE bookings    ADD COLUMN kommo_created_at timestamptz;
ALTER TABLE sales_leads ADD COLUMN kommo_created_at timestamptz;

-- What is known already: the newest staged copy of each lead. Rows with no
-- staged copy stay NULL and are outside every run's scope until a webhook
-- or a refresh writes them again.
UPDATE sales_leads l
   SET kommo_created_at = s.created_at
  FROM (SELECT DISTINCT ON (st.lead_id) st.lead_id, st.created_at
          FROM stg_kommo_leads st
          JOIN kommo_import_runs r ON r.id = st.run_id
         ORDER BY st.lead_id, r.started_at DESC) s
 WHERE l.kommo_lead_id = s.lead_id AND l.kommo_created_at IS NULL;
UPDATE bookings b
   SET kommo_created_at = l.kommo_created_at
  FROM sales_leads l
 WHERE b.kommo_lead_id = l.kommo_lead_id AND b.channel = 'Kommo'
   AND b.kommo_created_at IS NULL AND l.kommo_created_at IS NOT NULL;

CREATE INDEX sales_leads_kommo_created_idx
    ON sales_leads (kommo_created_at) WHERE source = 'Kommo' AND archived_at IS NULL;
CREATE INDEX bookings_kommo_created_idx
    ON bookings (kommo_created_at) WHERE channel = 'Kommo' AND is_active;

-- The run's scope, the same bounds its fetch used; the leads missing from
-- staging that Kommo still has (confirmed by id before the swap), which the
-- swap keeps; and the leads in statuses nobody has mapped.
ALTER TABLE kommo_import_runs
    ADD COLUMN scope_from         timestamptz,
    ADD COLUMN scope_to           timestamptz,
    ADD COLUMN kept_lead_ids      bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN unmapped_leads     integer NOT NULL DEFAULT 0,
    ADD COLUMN unmapped_statuses  jsonb NOT NULL DEFAULT '[]'::jsonb;

-- Kommo deletes applied by the webhook processor. A full refresh that
-- fetched a lead before its delete must not bring it back: the delete does
-- not change the lead's `updated_at`, so only this record tells.
CREATE TABLE kommo_lead_deletions (
    lead_id     bigint PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);

-- Statuses read from the account (`GET /api/v4/leads/pipelines`) at the
-- start of each run. `mapped_at` is NULL for a status nobody has mapped: the
-- refresh inserts those with the defaults and never changes `booking_status`
-- or `excluded`; an operator's change of either marks the row mapped.
ALTER TABLE kommo_status_map
    ADD COLUMN pipeline_id    bigint,
    ADD COLUMN pipeline_name  text,
    -- A row an operator inserts by hand is mapped; so are the seeded ones.
    ADD COLUMN mapped_at      timestamptz DEFAULT now();

CREATE FUNCTION kommo_status_map_mark_mapped() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.booking_status IS DISTINCT FROM OLD.booking_status
       OR NEW.excluded IS DISTINCT FROM OLD.excluded THEN
        NEW.mapped_at := now();
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER kommo_status_map_mark_mapped
    BEFORE UPDATE ON kommo_status_map
    FOR EACH ROW EXECUTE FUNCTION kommo_status_map_mark_mapped();
