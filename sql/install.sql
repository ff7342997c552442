--
-- Installing sor: schema, catalog, privileges.
--
\set SHOW_CONTEXT never
-- without shared_preload_libraries there are no workers, and sor says so
CREATE EXTENSION sor;
SELECT e.extversion, n.nspname
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'sor';

-- the catalog is dumped by pg_dump
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension
 WHERE extname = 'sor' ORDER BY 1;

-- the catalog is readable by everyone, writable by nobody but its owner
CREATE ROLE sor_nobody;
SELECT c.relname,
       has_table_privilege('sor_nobody', c.oid, 'SELECT') AS can_read,
       has_table_privilege('sor_nobody', c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE') AS can_write
  FROM pg_class c
 WHERE c.relnamespace = 'sor'::regnamespace AND c.relkind IN ('r', 'v')
 ORDER BY 1;

-- the functions that change state need a grant; the internal ones are
-- for sor's own use
SELECT p.oid::regprocedure AS function,
       has_function_privilege('sor_nobody', p.oid, 'EXECUTE') AS public_may_call,
       p.prosecdef AS security_definer,
       p.proconfig
  FROM pg_proc p
 WHERE p.pronamespace = 'sor'::regnamespace
 ORDER BY p.oid::regprocedure::text COLLATE "C";

-- both event triggers fire also with session_replication_role = replica
SELECT evtname, evtevent, evtenabled FROM pg_event_trigger
 WHERE evtname LIKE 'sor%' ORDER BY 1;

-- the local site is not a setting: "sor." is reserved once sor is loaded
SELECT sor.local_site();
SET sor.local_site = 'paris';
DROP ROLE sor_nobody;
