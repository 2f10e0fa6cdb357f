-- Runs once, on an empty data directory (the postgres image's entrypoint, or the local stack), as the
-- superuser. The roles the system needs besides the superuser itself.

-- Every app's login role is made a member of this group. pg_hba.conf matches it as +provisioned_apps, so
-- app roles can log in only over scram-sha-256 and never to the system's databases. It has no privileges,
-- and can never log in itself.
CREATE ROLE provisioned_apps WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;

-- The group of the service's short-lived agent roles: pg_dump and pg_restore log in as an agent that holds one
-- app's rights and nothing more (never as the superuser). pg_hba.conf matches it as +pgprov_agents. The
-- service also creates it at start on data directories initialised before it existed.
CREATE ROLE pgprov_agents WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
