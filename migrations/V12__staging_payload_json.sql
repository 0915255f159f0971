-- The full refresh's staging load (issue 16 §5; the profile is in
-- docs/benchmarks.md).
--
-- Each staged lead and contact keeps Kommo's raw JSON for troubleshooting.
-- As jsonb, PostgreSQL parsed every document into its binary form during
-- the COPY: 60% of the load's server time. Nothing reads the column in SQL,
-- so it is stored as json: the text as Kommo sent it, only checked to be
-- valid JSON. `->` and `->>` still work on it.
ALTER TABLE stg_kommo_leads ALTER COLUMN payload TYPE json;
ALTER TABLE stg_kommo_contacts ALTER COLUMN payload TYPE json;

-- The foreign keys to kommo_import_runs checked the run's row once per
-- staged row, and the worker updates that row with every page, so each
-- check walked its newest versions: about 20% of the load as the worker
-- writes it. Only the worker writes staging, under the run it holds;
-- nothing deletes runs (their cascade never fired), and retention deletes
-- staging by run.
ALTER TABLE stg_kommo_leads DROP CONSTRAINT stg_kommo_leads_run_id_fkey;
ALTER TABLE stg_kommo_contacts DROP CONSTRAINT stg_kommo_contacts_run_id_fkey;
ALTER TABLE stg_kommo_booking_vehicles DROP CONSTRAINT stg_kommo_booking_vehicles_run_id_fkey;
