-- Zoho in lockstep (issue 15): what Zoho last received, per client and per
-- booking, so only a real change costs a call, and a resumable reconcile.

-- A hash of exactly the ERP fields a Zoho record is built from, as of the last
-- successful sync, and when that was. NULL: never synced since V10 (the first
-- reconcile sends such rows once).
ALTER TABLE clients
    ADD COLUMN zoho_fingerprint text,
    ADD COLUMN zoho_synced_at   timestamptz;
ALTER TABLE bookings
    ADD COLUMN zoho_fingerprint text,
    ADD COLUMN zoho_synced_at   timestamptz;

-- The Contacts record's inputs (shared::outbox::drain::records::contact_record).
-- jsonb keeps NULL apart from '' and needs no separator.
CREATE FUNCTION zoho_contact_fingerprint(
    full_name text, first_name text, last_name text, email text, phone text
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT md5(jsonb_build_array(full_name, first_name, last_name, email, phone)::text) $$;

-- The Sales_Orders record's inputs (records::order_record): the client stands
-- for its contact lookup; times as epochs, so the session's TimeZone cannot
-- change the hash.
CREATE FUNCTION zoho_order_fingerprint(
    client_id uuid, title text, external_code text, total_amount numeric, currency text,
    start_at timestamptz, end_at timestamptz, status text, is_active boolean
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT md5(jsonb_build_array(client_id, title, external_code, total_amount::text, currency,
                                 extract(epoch FROM start_at), extract(epoch FROM end_at),
                                 status, is_active)::text)
$$;

-- Where the reconcile of clients and bookings has got to: keyset cursors by
-- id, so a pass cut short by a deadline resumes where it stopped. One row;
-- its lock serialises concurrent reconciles page by page.
CREATE TABLE zoho_reconcile_cursor (
    id                 text PRIMARY KEY DEFAULT 'default' CHECK (id = 'default'),
    -- 'clients', then 'bookings'.
    phase              text NOT NULL DEFAULT 'clients' CHECK (phase IN ('clients', 'bookings')),
    after_id           uuid,
    pass_started_at    timestamptz,
    last_completed_at  timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
INSERT INTO zoho_reconcile_cursor (id) VALUES ('default');
