-- Outbox operations: the runbook's requeue of failed rows.

-- Puts failed Zoho rows back to pending with a fresh set of attempts.
-- Only the newest failed row per dedupe_key is requeued, and none whose key
-- already has a live (pending or processing) row, so the partial unique index
-- on live rows is never violated. Bookings of requeued orders go back to
-- zoho_sync_status = 'pending'. Returns the number of rows requeued.
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
        SELECT DISTINCT ON (f.dedupe_key) f.id
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
     RETURNING o.entity_type, o.entity_id, o.event_type
    ),
    bookings_reset AS (
        UPDATE bookings b
           SET zoho_sync_status = 'pending', updated_at = now()
          FROM requeued r
         WHERE r.event_type = 'sales_order.create'
           AND r.entity_type = 'booking'
           AND b.id = r.entity_id
           AND b.zoho_sync_status = 'failed'
    )
    SELECT count(*) INTO n FROM requeued;
    RETURN n;
END;
$$;

COMMENT ON FUNCTION requeue_failed_outbox(text, timestamptz) IS
    'Runbook: requeue failed integrations_outbox rows (optionally one event type, or failed since a time).';
