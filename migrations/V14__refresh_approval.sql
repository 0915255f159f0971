-- Approving a held full refresh (issue 16 §2) is a request the worker
-- carries out: the swap of a large account does not fit in the 29 s API
-- Gateway gives an HTTP request. The run records who approved it and when;
-- it stays `needs_review` until the worker's swap commits, and a discard
-- before that still wins.
ALTER TABLE kommo_import_runs
    ADD COLUMN approved_by text,
    ADD COLUMN approved_at timestamptz;
