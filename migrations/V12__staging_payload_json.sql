-- The full refresh's staging load (issue 16 §5).
--
-- Each staged lead and contact keeps Kommo's raw JSON for troubleshooting.
-- As jsonb, PostgreSQL parsed every document into its binary form during
-- the COPY: more than half of the load's server time (2.3 of 3.6 s for
-- 50,000 leads and 35,000 contacts, docs/benchmarks.md). Nothing reads the
-- column in SQL, so it is stored as json: the text as Kommo sent it, only
-- checked to be valid JSON. `->` and `->>` still work on it.
ALTER TABLE stg_kommo_leads ALTER COLUMN payload TYPE json;
ALTER TABLE stg_kommo_contacts ALTER COLUMN payload TYPE json;
