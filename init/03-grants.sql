-- Runs once, on an empty data directory, as the superuser. Closes what Postgres opens to PUBLIC by default,
-- so that a new login role can do nothing until the service grants it its own database.

-- No login but the superuser may connect to, or make temporary tables in, the system's databases.
REVOKE ALL ON DATABASE postgres FROM PUBLIC;
REVOKE ALL ON DATABASE template1 FROM PUBLIC;
REVOKE ALL ON DATABASE provisioner FROM PUBLIC;

-- Every app database is copied from template1: nothing in it is usable by PUBLIC. The service then makes
-- the app's role the owner of its public schema.
\connect template1
REVOKE ALL ON SCHEMA public FROM PUBLIC;

\connect provisioner
REVOKE ALL ON SCHEMA public FROM PUBLIC;
