-- Runs once, on an empty data directory, as the superuser. The databases the system needs.

-- The service's own database: its bookkeeping lives here, apart from every app's data.
CREATE DATABASE provisioner;
