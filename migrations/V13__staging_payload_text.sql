-- The staging payload as plain text (issue 16 §5; docs/benchmarks.md, run 4).
--
-- As `json`, PostgreSQL lexed every staged document again to check it:
-- a fifth of the staging load's server time, for documents the worker has
-- already parsed (only what serde_json accepted is staged, and it is
-- staged as serde_json wrote it). The text is the same; read it with
-- `payload::json` (or `::jsonb`) as before.
ALTER TABLE stg_kommo_leads ALTER COLUMN payload TYPE text;
ALTER TABLE stg_kommo_contacts ALTER COLUMN payload TYPE text;
COMMENT ON COLUMN stg_kommo_leads.payload IS
    'The lead as Kommo sent it: JSON text, written by the refresh worker after parsing it. Read with payload::json.';
COMMENT ON COLUMN stg_kommo_contacts.payload IS
    'The contact as Kommo sent it: JSON text, written by the refresh worker after parsing it. Read with payload::json.';
