-- Operations: the audit trail, idempotent manual bookings, the manual-booking
-- switch, and the indexes retention purges by.

-- Audit trail ------------------------------------------------------------------

-- Append-only: who changed what, when, and what it was before. `actor` is the
-- staff JWT subject when the application acts (it sets `audit.actor` for its
-- transaction) and the database role otherwise, so a change made with psql is
-- recorded under the role that made it.
CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    subject   text NOT NULL,
    previous  jsonb,
    current   jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);
CREATE INDEX audit_log_subject_idx ON audit_log (action, subject, at DESC);

-- The application's own database role owns the table, so REVOKE alone would
-- not stop it; the trigger refuses every UPDATE and DELETE, and TRUNCATE too.
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;

-- Who the current transaction acts for.
CREATE FUNCTION audit_actor() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('audit.actor', true), ''), session_user::text)
$$;

-- Every change of a feature flag, however it was made.
CREATE FUNCTION system_feature_flags_audit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (actor, action, subject, previous, current)
    VALUES (
        audit_actor(),
        'flag.' || lower(TG_OP),
        coalesce(NEW.key, OLD.key),
        CASE WHEN TG_OP = 'INSERT' THEN NULL
             ELSE jsonb_build_object('enabled', OLD.enabled, 'description', OLD.description) END,
        CASE WHEN TG_OP = 'DELETE' THEN NULL
             ELSE jsonb_build_object('enabled', NEW.enabled, 'description', NEW.description) END
    );
    RETURN NULL;
END
$$;
CREATE TRIGGER system_feature_flags_audit
    AFTER INSERT OR UPDATE OR DELETE ON system_feature_flags
    FOR EACH ROW EXECUTE FUNCTION system_feature_flags_audit();

-- Manual bookings --------------------------------------------------------------

-- On by default so nothing changes on upgrade; an operator turns it off to
-- stop manual bookings while Kommo is healthy.
INSERT INTO system_feature_flags (key, enabled, description) VALUES
    ('enableManualBookings', true, 'POST /bookings: staff may create bookings by hand (the fallback during a Kommo outage)')
ON CONFLICT (key) DO NOTHING;

-- `Idempotency-Key` of POST /bookings, per staff member: the hash of the first
-- request and the answer it got, so a retry gets that answer again.
CREATE TABLE staff_idempotency_keys (
    staff_sub        text NOT NULL,
    idempotency_key  text NOT NULL,
    request_hash     text NOT NULL,
    status_code      integer NOT NULL,
    response         jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (staff_sub, idempotency_key)
);
CREATE INDEX staff_idempotency_keys_created_idx ON staff_idempotency_keys (created_at);

-- Requeue, now audited ---------------------------------------------------------

-- As in V3, plus one audit row per requeued outbox row in the same statement.
CREATE OR REPLACE FUNCTION requeue_failed_outbox(
    p_event_type   text DEFAULT NULL,
    p_failed_since timestamptz DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    n integer;
BEGIN
    WITH candidates AS (
        SELECT DISTINCT ON (f.dedupe_key) f.id, f.attempts, f.last_error, f.updated_at
          FROM integrations_outbox f
         WHERE f.status = 'failed'
           AND (p_event_type IS NULL OR f.event_type = p_event_type)
           AND (p_failed_since IS NULL OR f.updated_at >= p_failed_since)
           AND NOT EXISTS (
                 SELECT 1 FROM integrations_outbox l
                  WHERE l.dedupe_key = f.dedupe_key
                    AND l.status IN ('pending', 'processing'))
         ORDER BY f.dedupe_key, f.updated_at DESC
    ),
    requeued AS (
        UPDATE integrations_outbox o
           SET status = 'pending',
               attempts = 0,
               next_run_at = now(),
               locked_until = NULL,
               locked_by = NULL,
               updated_at = now()
          FROM candidates c
         WHERE o.id = c.id
     RETURNING o.id, o.entity_type, o.entity_id, o.event_type,
               c.attempts AS old_attempts, c.last_error AS old_error, c.updated_at AS failed_at
    ),
    bookings_reset AS (
        UPDATE bookings b
           SET zoho_sync_status = 'pending', updated_at = now()
          FROM requeued r
         WHERE r.event_type = 'sales_order.create'
           AND r.entity_type = 'booking'
           AND b.id = r.entity_id
           AND b.zoho_sync_status = 'failed'
    ),
    audited AS (
        INSERT INTO audit_log (actor, action, subject, previous, current)
        SELECT audit_actor(), 'outbox.requeue', r.id::text,
               jsonb_build_object('status', 'failed', 'attempts', r.old_attempts,
                                  'last_error', r.old_error, 'failed_at', r.failed_at),
               jsonb_build_object('status', 'pending', 'event_type', r.event_type,
                                  'entity_type', r.entity_type, 'entity_id', r.entity_id)
          FROM requeued r
    )
    SELECT count(*) INTO n FROM requeued;
    RETURN n;
END;
$$;

-- Full refresh: discarding a held run -----------------------------------------

-- A run held as `needs_review` left production untouched; discarding it
-- records the decision (status `failed`, phase `discarded`) and lets
-- retention purge its staging. Returns false unless the run was held.
CREATE FUNCTION discard_import_run(p_run_id uuid, p_reason text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    prev kommo_import_runs%ROWTYPE;
BEGIN
    SELECT * INTO prev FROM kommo_import_runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND OR prev.status <> 'needs_review' THEN
        RETURN false;
    END IF;
    UPDATE kommo_import_runs
       SET status = 'failed',
           phase = 'discarded',
           error = 'discarded by ' || audit_actor() || coalesce(': ' || p_reason, ''),
           finished_at = coalesce(finished_at, now()),
           updated_at = now()
     WHERE id = p_run_id;
    INSERT INTO audit_log (actor, action, subject, previous, current)
    VALUES (audit_actor(), 'refresh.discard', p_run_id::text,
            jsonb_build_object('status', prev.status, 'error', prev.error,
                               'leads_count', prev.leads_count,
                               'last_success_count', prev.last_success_count),
            jsonb_build_object('status', 'failed', 'phase', 'discarded', 'reason', p_reason));
    RETURN true;
END
$$;

-- Retention --------------------------------------------------------------------

-- The purge finds old succeeded rows without scanning live ones.
CREATE INDEX integrations_outbox_succeeded_idx
    ON integrations_outbox (updated_at) WHERE status = 'succeeded';
CREATE INDEX kommo_webhook_events_processed_idx
    ON kommo_webhook_events (processed_at) WHERE status = 'processed';
