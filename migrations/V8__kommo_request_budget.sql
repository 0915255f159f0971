-- One Kommo request budget for the whole account (7 requests per second),
-- shared by every container of every function. Kommo blocks the integration's
-- IP after repeated excess, and per-container limiters add up: three
-- processors and a refresh worker would send 28 req/s.
--
-- Each request reserves the next free slot with one UPDATE … RETURNING
-- (GCRA with a burst of one): `next_slot` is the earliest instant the next
-- request may go. The `webhooks` row is a second, slower lane the processors
-- pass through first while a full refresh runs, so the refresh gets most of
-- the budget without starving webhooks.
CREATE TABLE kommo_request_budget (
    id             text PRIMARY KEY CHECK (id IN ('account', 'webhooks')),
    next_slot      timestamptz NOT NULL DEFAULT now(),
    -- After a 403 (IP blocked) nobody calls Kommo until then.
    blocked_until  timestamptz,
    -- Set by the refresh worker with each request it makes.
    refresh_until  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO kommo_request_budget (id) VALUES ('account'), ('webhooks');
