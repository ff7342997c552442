/* sor--1.0.sql: install script of the sor extension, version 1.0 */

\echo Use "CREATE EXTENSION sor" to load this file. \quit

/*
 * Catalog
 *
 * Nobody writes these tables directly: the functions below are the only way
 * in.  Everyone may read them.  All of them are dumped by pg_dump.  Every
 * table that the caches in catalog.c read has the row trigger
 * sor.catalog_changed(), enabled ALWAYS, so that changes made here or
 * applied by replication reach every backend's cache.
 */

-- Every site that takes part.
CREATE TABLE @extschema@.site (
    name        text COLLATE "C" PRIMARY KEY
                CHECK (name OPERATOR(pg_catalog.~) '^[a-z0-9_]{1,63}$'),
    added_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- The site this database is: at most one row.  Never replicated.
CREATE TABLE @extschema@.local_identity (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    site        text COLLATE "C" NOT NULL REFERENCES @extschema@.site,
    set_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Kinds of record.  key_type is the type that reads and writes keys
-- (bigint, text or uuid); default_site owns every key without an entry.
CREATE TABLE @extschema@.domain (
    name            text COLLATE "C" PRIMARY KEY
                    CHECK (pg_catalog.octet_length(name) BETWEEN 1 AND 255),
    key_type        regtype NOT NULL,
    default_site    text COLLATE "C" REFERENCES @extschema@.site,
    default_epoch   bigint NOT NULL DEFAULT 0 CHECK (default_epoch >= 0),
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Registered tables.  A registered partitioned table covers its partitions.
CREATE TABLE @extschema@.registered_table (
    tbl             regclass PRIMARY KEY,
    domain          text COLLATE "C" NOT NULL REFERENCES @extschema@.domain,
    key_column      name NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Ownership entries: (domain, key) -> (site, epoch).  key is in canonical
-- form (sor.canonical_key).
CREATE TABLE @extschema@.owner_entry (
    domain      text COLLATE "C" NOT NULL REFERENCES @extschema@.domain,
    key         text COLLATE "C" NOT NULL,
    site        text COLLATE "C" NOT NULL REFERENCES @extschema@.site,
    epoch       bigint NOT NULL CHECK (epoch > 0),
    changed_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- the site that handed the record over, for a transfer; else NULL
    from_site   text COLLATE "C",
    -- set where a transfer arrives by replication: the new owner writes
    -- once every other site has acknowledged the hand-off (handoff_ack)
    awaiting_acks boolean NOT NULL DEFAULT false,
    PRIMARY KEY (domain, key)
);
-- The enforcement trigger's probe for one key: hashing the key costs less
-- than comparing (domain, key) down the primary key's tree.
CREATE INDEX owner_entry_key_hash ON @extschema@.owner_entry USING hash (key);

-- Every change of owner, append-only.  key is NULL for a change of a
-- domain's default owner.  Rows are numbered per recording site, so that
-- histories of several sites can be merged.
CREATE TABLE @extschema@.ownership_history (
    recorded_at_site    text COLLATE "C" NOT NULL,
    seq                 bigint GENERATED ALWAYS AS IDENTITY,
    domain              text COLLATE "C" NOT NULL,
    key                 text COLLATE "C",
    action              text NOT NULL
                        CHECK (action IN ('claim', 'transfer', 'takeover')),
    from_site           text COLLATE "C",
    to_site             text COLLATE "C" NOT NULL,
    epoch               bigint NOT NULL,
    changed_by          name NOT NULL,
    changed_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (recorded_at_site, seq)
);

-- Acknowledgements of hand-offs: site has applied every change that the
-- record's previous owner made before it handed the record over at epoch
-- (or a later one).  Each row is written only by its site, and travels to
-- every other site.
CREATE TABLE @extschema@.handoff_ack (
    domain      text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    site        text COLLATE "C" NOT NULL,
    epoch       bigint NOT NULL,
    acked_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (domain, key, site)
);

-- Changes that arrived by replication and were not applied, and rows that
-- a takeover displaced: kept here, per site, until an operator applies or
-- discards them (sor.apply_conflict, sor.discard_conflict).  Never
-- replicated.
CREATE TABLE @extschema@.conflict (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    noted_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    reason      text NOT NULL CHECK (reason IN ('not_owner', 'displaced')),
    origin_site text COLLATE "C",
    owner_site  text COLLATE "C",
    epoch       bigint,
    tbl         regclass NOT NULL,
    domain      text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    operation   text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    old_row     jsonb,
    new_row     jsonb
);
CREATE INDEX conflict_record ON @extschema@.conflict (domain, key);

-- Never read or written: every writer of a registered table holds a weak
-- lock on it, which changes of many records at once wait for (see
-- src/lock.c).
CREATE TABLE @extschema@.write_fence ();

SELECT pg_catalog.pg_extension_config_dump('@extschema@.site', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.local_identity', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.domain', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.registered_table', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.owner_entry', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ownership_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.handoff_ack', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.conflict', '');

CREATE VIEW @extschema@.ownership AS
    SELECT domain, key, site, epoch, changed_at
      FROM @extschema@.owner_entry;

/*
 * Functions in C
 */

CREATE FUNCTION @extschema@.enforce() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_enforce';

CREATE FUNCTION @extschema@.catalog_changed() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_catalog_changed';

CREATE FUNCTION @extschema@.local_site() RETURNS text
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_local_site_sql';

CREATE FUNCTION @extschema@.owner_of(domain text, key text) RETURNS text
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_owner_of';

-- Fill the shared ownership cache with a domain's entries: after a
-- restart, or for a domain whose writes would otherwise probe.
CREATE FUNCTION @extschema@.prewarm_shared_cache(domain text) RETURNS bigint
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_prewarm_shared_cache_sql';

CREATE FUNCTION @extschema@.canonical_key(domain text, key text) RETURNS text
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_canonical_key_sql';

CREATE FUNCTION @extschema@.key_type_family(regtype) RETURNS regtype
    LANGUAGE C IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'sor_key_type_family';

CREATE FUNCTION @extschema@.lock_record_for_handoff(domain text, key text)
    RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_lock_record_for_handoff_sql';

CREATE FUNCTION @extschema@.lock_domain_for_handoff(domain text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_lock_domain_for_handoff_sql';

/*
 * Helpers of the implementations below.
 */

-- value, unless it is NULL or empty.
CREATE FUNCTION @extschema@.required(value text, what text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be null', what
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF value = '' THEN
        RAISE EXCEPTION '% must not be empty', what
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN value;
END
$$;

-- name, if a site of that name exists.
CREATE FUNCTION @extschema@.existing_site(name text, what text) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.required(name, what);
    IF NOT EXISTS (SELECT FROM @extschema@.site s WHERE s.name = existing_site.name) THEN
        RAISE EXCEPTION 'site "%" does not exist', name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add it with sor.add_site().';
    END IF;
    RETURN name;
END
$$;

-- The local site's name; an error while it is not set.
CREATE FUNCTION @extschema@.required_local_site() RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    local text := @extschema@.local_site();
BEGIN
    IF local IS NULL THEN
        RAISE EXCEPTION 'the local site is not set'
            USING ERRCODE = 'SR003',
                  HINT = 'An administrator names this site with sor.set_local_site().';
    END IF;
    RETURN local;
END
$$;

-- The domain's catalog row; an error if there is none.
CREATE FUNCTION @extschema@.existing_domain(name text)
    RETURNS @extschema@.domain
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d @extschema@.domain;
BEGIN
    PERFORM @extschema@.required(name, 'domain');
    SELECT * INTO d FROM @extschema@.domain WHERE domain.name = existing_domain.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'domain "%" does not exist', name
            USING ERRCODE = 'undefined_object',
                  HINT = 'A domain is created by the first sor.register_table() that names it.';
    END IF;
    RETURN d;
END
$$;

-- Current owner and epoch of (domain, key): the entry, else the domain's
-- default; site is NULL when the record has no owner.  Call it after taking
-- the hand-off lock.  The entry is locked FOR UPDATE: in READ COMMITTED that
-- reads its latest version; in REPEATABLE READ a concurrent change of it
-- makes this transaction fail with a serialization error.
CREATE FUNCTION @extschema@.current_owner(d @extschema@.domain, key text,
                                          OUT site text, OUT epoch bigint,
                                          OUT has_entry boolean)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT e.site, e.epoch INTO site, epoch
      FROM @extschema@.owner_entry e
     WHERE e.domain = d.name AND e.key = current_owner.key
       FOR UPDATE;
    has_entry := FOUND;
    IF NOT has_entry THEN
        site := d.default_site;
        epoch := d.default_epoch;
    END IF;
END
$$;

-- Set the owner of (domain, key) and record it in the history.
CREATE FUNCTION @extschema@.set_owner(d @extschema@.domain, key text,
                                      action text, from_site text,
                                      to_site text, epoch bigint,
                                      invoker oid)
    RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO @extschema@.owner_entry AS e (domain, key, site, epoch,
                                              from_site)
    VALUES (d.name, key, to_site, epoch,
            CASE WHEN action = 'transfer' THEN from_site END)
    ON CONFLICT ON CONSTRAINT owner_entry_pkey DO UPDATE
       SET site = excluded.site, epoch = excluded.epoch,
           changed_at = pg_catalog.now(), from_site = excluded.from_site,
           awaiting_acks = false;

    -- a takeover sends this site's copy of the record to every site, after
    -- the new entry and before the history row (see displace_record)
    IF action = 'takeover' THEN
        PERFORM @extschema@.republish(d, key);
    END IF;

    INSERT INTO @extschema@.ownership_history
           (recorded_at_site, domain, key, action, from_site, to_site, epoch,
            changed_by)
    VALUES (@extschema@.required_local_site(), d.name, key, action, from_site,
            to_site, epoch,
            (SELECT rolname FROM pg_roles WHERE oid = invoker));
END
$$;

-- "schema.table" (a temporary table: "table") for messages, which quote it.
CREATE FUNCTION @extschema@.display_name(rel regclass) RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN c.relpersistence OPERATOR(pg_catalog.=) 't' THEN c.relname::text
                ELSE n.nspname OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) c.relname END
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.oid OPERATOR(pg_catalog.=) rel
$$;

-- The sites that have not yet acknowledged the hand-off of (domain, key)
-- to this site, as a quoted list, or NULL.  Only a transfer that arrived by
-- replication waits for acknowledgements (owner_entry.awaiting_acks).
CREATE FUNCTION @extschema@.missing_acks(d @extschema@.domain, key text)
    RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.string_agg(pg_catalog.format('"%s"', s.name), ', '
                                 ORDER BY s.name)
      FROM @extschema@.owner_entry e
      JOIN @extschema@.site s
        ON s.name OPERATOR(pg_catalog.<>) e.site
       AND s.name OPERATOR(pg_catalog.<>) e.from_site
     WHERE e.domain OPERATOR(pg_catalog.=) d.name
       AND e.key OPERATOR(pg_catalog.=) missing_acks.key
       AND e.awaiting_acks
       AND NOT EXISTS (SELECT FROM @extschema@.handoff_ack a
                        WHERE a.domain OPERATOR(pg_catalog.=) e.domain
                          AND a.key OPERATOR(pg_catalog.=) e.key
                          AND a.site OPERATOR(pg_catalog.=) s.name
                          AND a.epoch OPERATOR(pg_catalog.>=) e.epoch)
$$;

-- The same, by domain name, for the cache in catalog.c.
CREATE FUNCTION @extschema@.missing_acks(domain text, key text) RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT @extschema@.missing_acks(d, key)
      FROM @extschema@.domain d WHERE d.name OPERATOR(pg_catalog.=) domain
$$;

-- A condition on the key column of one of d's tables, for format(): the
-- record key (NULL: every record of d that has no entry of its own).
CREATE FUNCTION @extschema@.record_condition(d @extschema@.domain,
                                             key_column name, key text)
    RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN key IS NOT NULL
                THEN pg_catalog.format('%I = %L::%s', key_column, key, d.key_type)
                ELSE pg_catalog.format('NOT EXISTS (SELECT FROM @extschema@.owner_entry e'
                                       ' WHERE e.domain = %L AND e.key = %I::text)',
                                       d.name, key_column)
           END
$$;

-- The columns of rel that an INSERT may set, quoted and comma-separated.
CREATE FUNCTION @extschema@.insertable_columns(rel regclass) RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', '
                                 ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid OPERATOR(pg_catalog.=) rel AND a.attnum OPERATOR(pg_catalog.>) 0
       AND NOT a.attisdropped AND a.attgenerated OPERATOR(pg_catalog.=) ''
$$;

/*
 * After a takeover, at the site that took over: write the rows of the
 * record (key NULL: of every record of d without an entry of its own) again
 * as they are here, so that they travel to every other site, which has set
 * its own copy aside (displace_record).  The rows are deleted and inserted
 * again with session_replication_role = replica, so that neither triggers
 * nor foreign-key actions fire: nothing changes here.
 */
CREATE FUNCTION @extschema@.republish(d @extschema@.domain, key text)
    RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    cols text;
    role text := pg_catalog.current_setting('session_replication_role');
BEGIN
    PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
    FOR t IN SELECT r.tbl, r.key_column FROM @extschema@.registered_table r
              WHERE r.domain = d.name ORDER BY r.tbl::oid
    LOOP
        cols := @extschema@.insertable_columns(t.tbl);
        EXECUTE format('WITH gone AS (DELETE FROM %s WHERE %s RETURNING *)'
                       ' INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM gone',
                       t.tbl, @extschema@.record_condition(d, t.key_column, key),
                       t.tbl, cols, cols);
    END LOOP;
    PERFORM pg_catalog.set_config('session_replication_role', role, true);
END
$$;

/*
 * At a site where a takeover arrives by replication: set aside this site's
 * rows of the record (key NULL: of every record of d without an entry), as
 * conflicts of reason 'displaced', and delete them.  The site that took
 * over sends its own rows next (republish); prune_displaced() then drops
 * the set-aside rows that equal what arrived.  Called by the catalog
 * trigger, which lets these deletes pass the enforcement trigger.
 */
CREATE FUNCTION @extschema@.displace_record(domain text, key text,
                                            previous_owner text,
                                            new_owner text, epoch bigint)
    RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d @extschema@.domain := @extschema@.existing_domain(domain);
    t record;
BEGIN
    FOR t IN SELECT r.tbl, r.key_column FROM @extschema@.registered_table r
              WHERE r.domain = d.name ORDER BY r.tbl::oid
    LOOP
        EXECUTE format('WITH gone AS (DELETE FROM %s x WHERE %s RETURNING x.*)'
                       ' INSERT INTO @extschema@.conflict (reason, origin_site, owner_site,'
                       '     epoch, tbl, domain, key, operation, new_row)'
                       ' SELECT ''displaced'', $1, $2, $3, $4, $5, %I::text, ''INSERT'','
                       '        pg_catalog.to_jsonb(gone)'
                       '   FROM gone',
                       t.tbl, @extschema@.record_condition(d, t.key_column, key),
                       t.key_column)
            USING previous_owner, new_owner, epoch, t.tbl, d.name;
    END LOOP;
END
$$;

-- The end of a takeover that arrived by replication: forget the displaced
-- rows that equal a row the new owner sent.
CREATE FUNCTION @extschema@.prune_displaced(domain text, key text)
    RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d @extschema@.domain := @extschema@.existing_domain(domain);
    t record;
BEGIN
    FOR t IN SELECT r.tbl, r.key_column FROM @extschema@.registered_table r
              WHERE r.domain = d.name
    LOOP
        EXECUTE format('DELETE FROM @extschema@.conflict c'
                       ' WHERE c.reason = ''displaced'' AND c.tbl = $1'
                       '   AND c.domain = $2 AND ($3 IS NULL OR c.key = $3)'
                       '   AND EXISTS (SELECT FROM %s x'
                       '                WHERE x.%I = c.key::%s'
                       '                  AND pg_catalog.to_jsonb(x) = c.new_row)',
                       t.tbl, t.key_column, d.key_type)
            USING t.tbl, d.name, key;
    END LOOP;
END
$$;

-- Keep a change that arrived by replication and was not applied (called by
-- the enforcement trigger; row images come as jsonb).
CREATE FUNCTION @extschema@.set_aside(origin_site text, owner_site text,
                                      epoch bigint, tbl regclass,
                                      domain text, key text,
                                      operation text, old_row jsonb,
                                      new_row jsonb)
    RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.conflict (reason, origin_site, owner_site, epoch,
                                      tbl, domain, key, operation, old_row,
                                      new_row)
    VALUES ('not_owner', origin_site, owner_site, epoch, tbl, domain, key,
            operation, old_row, new_row)
$$;

-- The start of every change of one record's owner: the domain, the local
-- site and the key in canonical form, checked; the record's hand-off lock,
-- taken (waiting for its open writers); then its current owner and epoch.
-- The record's entry, if it has one, is locked before the hand-off lock:
-- any other change of the entry (one that replication applies, say) holds
-- the row when its catalog trigger asks for the hand-off lock, so taking
-- them in the other order would deadlock with it.
CREATE FUNCTION @extschema@.begin_handoff(domain text, key text,
                                          OUT d @extschema@.domain,
                                          OUT k text, OUT local text,
                                          OUT site text, OUT epoch bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cur record;
BEGIN
    d := @extschema@.existing_domain(domain);
    local := @extschema@.required_local_site();
    k := @extschema@.canonical_key(d.name, @extschema@.required(key, 'key'));
    PERFORM FROM @extschema@.owner_entry e
      WHERE e.domain = d.name AND e.key = k FOR UPDATE;
    PERFORM @extschema@.lock_record_for_handoff(d.name, k);
    cur := @extschema@.current_owner(d, k);
    site := cur.site;
    epoch := cur.epoch;
END
$$;

-- The registered table (or registered ancestor) that covers rel, or NULL.
CREATE FUNCTION @extschema@.registered_root(rel regclass) RETURNS regclass
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.tbl
      FROM @extschema@.registered_table r
     WHERE r.tbl OPERATOR(pg_catalog.=) rel
        OR r.tbl OPERATOR(pg_catalog.=) ANY
           (SELECT pg_catalog.pg_partition_ancestors(rel))
$$;

-- rel and, if it is partitioned, all of its partitions, leaves last.
CREATE FUNCTION @extschema@.table_and_partitions(rel regclass)
    RETURNS SETOF regclass
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT rel
    UNION ALL
    (SELECT relid FROM pg_catalog.pg_partition_tree(rel)
      WHERE relid OPERATOR(pg_catalog.<>) rel ORDER BY level)
$$;

/*
 * Install sor's triggers on rel (a table being registered, or a partition of
 * a registered table) where they are missing, and enable them ALWAYS.  A
 * partition gets the row trigger as a clone of its parent's and needs a
 * TRUNCATE trigger of its own.  Each step leaves the triggers in a state
 * that check_protection() accepts, since the event triggers check after
 * every step.
 */
CREATE FUNCTION @extschema@.install_triggers(rel regclass) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger
                    WHERE tgrelid = rel AND tgname = 'zzz_sor_enforce') THEN
        EXECUTE format('CREATE TRIGGER zzz_sor_enforce'
                       ' BEFORE INSERT OR UPDATE OR DELETE ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION @extschema@.enforce()', rel);
    END IF;
    IF EXISTS (SELECT FROM pg_trigger
                WHERE tgrelid = rel AND tgname = 'zzz_sor_enforce'
                  AND tgenabled <> 'A') THEN
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zzz_sor_enforce', rel);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger
                    WHERE tgrelid = rel AND tgname = 'zzz_sor_truncate') THEN
        EXECUTE format('CREATE TRIGGER zzz_sor_truncate'
                       ' BEFORE TRUNCATE ON %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.enforce()', rel);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zzz_sor_truncate', rel);
    END IF;
END
$$;

/*
 * Refuse anything that would weaken the enforcement on rel, a registered
 * table or a partition of one (root): a sor trigger that is renamed or not
 * enabled ALWAYS (a just created one is allowed until it is enabled), a
 * missing one (when complete), a dropped, renamed or retyped key column, a
 * BEFORE ROW trigger that fires after sor's and so could change the key
 * after it was checked, or a registered table attached as a partition of
 * another.  Dropped triggers are refused by guard_drop().
 */
CREATE FUNCTION @extschema@.check_protection(rel regclass, root regclass,
                                             complete boolean,
                                             just_created boolean DEFAULT false)
    RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    reg @extschema@.registered_table;
    d @extschema@.domain;
    keytype regtype;
    late name;
BEGIN
    SELECT * INTO reg FROM @extschema@.registered_table WHERE tbl = root;
    d := @extschema@.existing_domain(reg.domain);

    IF rel <> root AND EXISTS (SELECT FROM @extschema@.registered_table
                                WHERE tbl = rel) THEN
        RAISE EXCEPTION 'cannot attach registered table "%" as a partition of registered table "%"',
                        @extschema@.display_name(rel), @extschema@.display_name(root)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Unregister it with sor.unregister_table() first.';
    END IF;

    IF EXISTS (SELECT FROM pg_trigger t
                WHERE t.tgrelid = rel
                  AND t.tgfoid = '@extschema@.enforce()'::regprocedure
                  AND (t.tgname NOT IN ('zzz_sor_enforce', 'zzz_sor_truncate')
                       OR (t.tgenabled <> 'A' AND NOT just_created)))
       OR (complete AND (SELECT count(*) FROM pg_trigger t
                          WHERE t.tgrelid = rel
                            AND t.tgfoid = '@extschema@.enforce()'::regprocedure) <> 2)
    THEN
        RAISE EXCEPTION 'cannot disable, drop or rename the sor triggers of registered table "%"',
                        @extschema@.display_name(rel)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Triggers "zzz_sor_enforce" and "zzz_sor_truncate" must stay enabled ALWAYS while the table is registered.',
                  HINT = 'To stop enforcing ownership on the table, unregister it with sor.unregister_table().';
    END IF;

    SELECT a.atttypid INTO keytype
      FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attname = reg.key_column
       AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    IF keytype IS NULL
       OR @extschema@.key_type_family(keytype) IS DISTINCT FROM d.key_type THEN
        RAISE EXCEPTION 'cannot drop, rename, retype or generate key column "%" of registered table "%"',
                        reg.key_column, @extschema@.display_name(rel)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Domain "%s" has keys of type %s.', d.name, d.key_type),
                  HINT = 'Unregister the table with sor.unregister_table() first.';
    END IF;

    SELECT t.tgname INTO late
      FROM pg_trigger t
     WHERE t.tgrelid = rel
       AND t.tgname COLLATE "C" > 'zzz_sor_enforce'
       AND (t.tgtype & 1) <> 0          -- TRIGGER_TYPE_ROW
       AND (t.tgtype & 2) <> 0          -- TRIGGER_TYPE_BEFORE
       AND (t.tgtype & (4 | 16)) <> 0   -- INSERT or UPDATE
     ORDER BY 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'trigger "%" on registered table "%" would fire after the sor trigger',
                        late, @extschema@.display_name(rel)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'BEFORE ROW triggers fire in name order; one that fires after "zzz_sor_enforce" could change a key after its owner was checked.',
                  HINT = 'Give the trigger a name that sorts before "zzz_sor_enforce".';
    END IF;
END
$$;

/*
 * Event triggers: sor's triggers cannot be disabled or dropped on a
 * registered table except by sor.unregister_table(), new partitions of a
 * registered table get them, and a dropped table is unregistered.  Both
 * are enabled ALWAYS, so session_replication_role does not switch them off.
 */
CREATE FUNCTION @extschema@.guard_ddl() RETURNS event_trigger
    LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'sor_guard_ddl';

-- The checks of guard_ddl(), for a command with tag tag; adds_partition
-- tells whether it created or attached a partition.
CREATE FUNCTION @extschema@.check_ddl(tag text, adds_partition boolean)
    RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass;
    root regclass;
    part regclass;
BEGIN
    FOR rel IN
        SELECT DISTINCT CASE c.object_type
                        WHEN 'trigger' THEN (SELECT tgrelid FROM pg_trigger
                                              WHERE oid = c.objid)
                        ELSE c.objid END::regclass
          FROM pg_event_trigger_ddl_commands() c
         WHERE c.object_type IN ('table', 'table column', 'trigger')
    LOOP
        CONTINUE WHEN rel IS NULL;
        root := @extschema@.registered_root(rel);
        CONTINUE WHEN root IS NULL;
        FOR part IN SELECT @extschema@.table_and_partitions(rel) LOOP
            IF adds_partition AND part <> root THEN
                PERFORM @extschema@.install_triggers(part);
            END IF;
            PERFORM @extschema@.check_protection(part, root, false,
                                                 tag = 'CREATE TRIGGER');
        END LOOP;
    END LOOP;

    -- a detached partition is an ordinary table again: it lost the cloned
    -- row trigger, and loses its TRUNCATE trigger here
    IF tag = 'ALTER TABLE' THEN
        FOR rel IN SELECT t.tgrelid FROM pg_trigger t
                    WHERE t.tgname = 'zzz_sor_truncate'
                      AND t.tgfoid = '@extschema@.enforce()'::regprocedure
                      AND NOT EXISTS (SELECT FROM pg_trigger r
                                       WHERE r.tgrelid = t.tgrelid
                                         AND r.tgname = 'zzz_sor_enforce')
                      AND @extschema@.registered_root(t.tgrelid) IS NULL
        LOOP
            EXECUTE format('DROP TRIGGER zzz_sor_truncate ON %s', rel);
        END LOOP;
    END IF;
END
$$;

CREATE FUNCTION @extschema@.guard_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    obj record;
    rel regclass;
BEGIN
    DELETE FROM @extschema@.registered_table r
     USING pg_event_trigger_dropped_objects() o
     WHERE o.classid = 'pg_class'::regclass AND o.objsubid = 0
       AND r.tbl::oid = o.objid;

    FOR obj IN
        SELECT o.address_names FROM pg_event_trigger_dropped_objects() o
         WHERE o.object_type = 'trigger'
           AND o.address_names[3] IN ('zzz_sor_enforce', 'zzz_sor_truncate')
    LOOP
        rel := to_regclass(format('%I.%I', obj.address_names[1], obj.address_names[2]));
        IF rel IS NOT NULL AND @extschema@.registered_root(rel) IS NOT NULL THEN
            RAISE EXCEPTION 'cannot drop trigger "%" of registered table "%"',
                            obj.address_names[3], @extschema@.display_name(rel)
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'To stop enforcing ownership on the table, unregister it with sor.unregister_table().';
        END IF;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER sor_guard_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER')
    EXECUTE FUNCTION @extschema@.guard_ddl();
ALTER EVENT TRIGGER sor_guard_ddl ENABLE ALWAYS;

CREATE EVENT TRIGGER sor_guard_drop ON sql_drop
    EXECUTE FUNCTION @extschema@.guard_drop();
ALTER EVENT TRIGGER sor_guard_drop ENABLE ALWAYS;

/*
 * The public interface.
 *
 * Every function that changes state is declared in C as
 * sor_call_with_invoker, which calls the PL/pgSQL function NAME_impl with
 * the calling role as an extra argument (see functions.c).  The _impl
 * functions are SECURITY DEFINER; nobody may execute them directly.
 */

CREATE FUNCTION @extschema@.add_site(name text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.add_site_impl(name text, invoker oid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.required(name, 'site name');
    IF name !~ '^[a-z0-9_]{1,63}$' THEN
        RAISE EXCEPTION 'invalid site name "%"', name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A site name is 1 to 63 lower-case letters, digits and underscores.';
    END IF;
    INSERT INTO @extschema@.site (name) VALUES (name) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'site "%" already exists', name
            USING ERRCODE = 'duplicate_object';
    END IF;
END
$$;

CREATE FUNCTION @extschema@.set_local_site(name text, force boolean DEFAULT false)
    RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.set_local_site_impl(name text, force boolean,
                                                invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current text;
BEGIN
    PERFORM @extschema@.existing_site(name, 'site name');
    IF force IS NULL THEN
        RAISE EXCEPTION 'force must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT site INTO current FROM @extschema@.local_identity FOR UPDATE;
    IF current = name THEN
        RETURN;
    END IF;
    IF current IS NOT NULL AND NOT force THEN
        RAISE EXCEPTION 'local site is already set to "%"', current
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('This database would stop writing the records that site "%s" owns and start writing those of site "%s".',
                                  current, name),
                  HINT = 'Pass force => true to change it anyway.';
    END IF;
    -- writes checked against the old local site must commit first
    PERFORM @extschema@.lock_domain_for_handoff(d.name)
       FROM @extschema@.domain d ORDER BY d.name;
    INSERT INTO @extschema@.local_identity (site) VALUES (name)
    ON CONFLICT (singleton) DO UPDATE SET site = excluded.site,
                                          set_at = pg_catalog.now();
END
$$;

CREATE FUNCTION @extschema@.register_table(tbl regclass, key_column name,
                                           domain text DEFAULT NULL,
                                           default_site text DEFAULT NULL)
    RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.register_table_impl(tbl regclass, key_column name,
                                                domain text, default_site text,
                                                invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cls pg_class;
    keytype regtype;
    generated boolean;
    family regtype;
    d @extschema@.domain;
    part regclass;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM @extschema@.required(key_column, 'key column');
    SELECT * INTO cls FROM pg_class WHERE oid = tbl;
    IF cls.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'cannot register "%": it is not a table', @extschema@.display_name(tbl)
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'Only ordinary and partitioned tables can be registered.';
    END IF;
    IF cls.relpersistence = 't' THEN
        RAISE EXCEPTION 'cannot register temporary table "%"', @extschema@.display_name(tbl)
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'A temporary table exists in one session only; it has no copies at other sites.';
    END IF;
    IF cls.relispartition THEN
        RAISE EXCEPTION 'cannot register partition "%"', @extschema@.display_name(tbl)
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Register the partitioned table; that covers all of its partitions.';
    END IF;
    IF NOT pg_has_role(invoker, cls.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table "%"', @extschema@.display_name(tbl)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT FROM @extschema@.registered_table r WHERE r.tbl = register_table_impl.tbl) THEN
        RAISE EXCEPTION 'table "%" is already registered', @extschema@.display_name(tbl)
            USING ERRCODE = 'duplicate_object',
                  DETAIL = format('It belongs to domain "%s".',
                                  (SELECT r.domain FROM @extschema@.registered_table r
                                    WHERE r.tbl = register_table_impl.tbl));
    END IF;

    SELECT a.atttypid, a.attgenerated <> '' INTO keytype, generated
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = key_column
       AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', key_column, @extschema@.display_name(tbl)
            USING ERRCODE = 'undefined_column';
    END IF;
    IF generated THEN
        RAISE EXCEPTION 'key column "%" cannot be a generated column', key_column
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A generated column gets its value after the row triggers have checked the key.';
    END IF;
    family := @extschema@.key_type_family(keytype);
    IF family IS NULL THEN
        RAISE EXCEPTION 'key column "%" has type %, which cannot be a key', key_column, keytype
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A key needs one canonical text form: smallint, integer, bigint, text, varchar and uuid (or domains over them) have one.';
    END IF;

    IF domain IS NULL THEN
        domain := format('%I.%I', (SELECT nspname FROM pg_namespace
                                    WHERE oid = cls.relnamespace), cls.relname);
    ELSIF domain = '' OR octet_length(domain) > 255 THEN
        RAISE EXCEPTION 'invalid domain name "%"', domain
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A domain name is 1 to 255 bytes long.';
    END IF;
    IF default_site IS NOT NULL THEN
        PERFORM @extschema@.existing_site(default_site, 'default site');
    END IF;

    SELECT * INTO d FROM @extschema@.domain dm
     WHERE dm.name = register_table_impl.domain FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO @extschema@.domain (name, key_type, default_site)
        VALUES (domain, family, default_site);
    ELSE
        IF d.key_type <> family THEN
            RAISE EXCEPTION 'key column "%" of type % does not fit domain "%"',
                            key_column, keytype, domain
                USING ERRCODE = 'datatype_mismatch',
                      DETAIL = format('The keys of domain "%s" are of type %s.', domain, d.key_type);
        END IF;
        IF default_site IS DISTINCT FROM d.default_site AND default_site IS NOT NULL THEN
            IF d.default_site IS NOT NULL THEN
                RAISE EXCEPTION 'domain "%" already has default site "%"', domain, d.default_site
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Leave default_site out to keep the domain''s default site.';
            END IF;
            -- records without an owner get one: nobody can have written them
            UPDATE @extschema@.domain dm
               SET default_site = register_table_impl.default_site
             WHERE dm.name = register_table_impl.domain;
        END IF;
    END IF;

    PERFORM @extschema@.install_triggers(t)
       FROM @extschema@.table_and_partitions(tbl) t;

    INSERT INTO @extschema@.registered_table (tbl, domain, key_column)
    VALUES (tbl, domain, key_column);

    PERFORM @extschema@.check_protection(t, tbl, true)
       FROM @extschema@.table_and_partitions(tbl) t;
    PERFORM @extschema@.replicate(tbl);
END
$$;

CREATE FUNCTION @extschema@.unregister_table(tbl regclass) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.unregister_table_impl(tbl regclass, invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part regclass;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.registered_table r
                    WHERE r.tbl = unregister_table_impl.tbl) THEN
        RAISE EXCEPTION 'table "%" is not registered', @extschema@.display_name(tbl)
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT pg_has_role(invoker, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table "%"', @extschema@.display_name(tbl)
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    -- first the registration, so that the event triggers let the drops pass
    DELETE FROM @extschema@.registered_table r WHERE r.tbl = unregister_table_impl.tbl;
    FOR part IN SELECT @extschema@.table_and_partitions(tbl) LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS zzz_sor_truncate ON %s', part);
    END LOOP;
    EXECUTE format('DROP TRIGGER zzz_sor_enforce ON %s', tbl);
END
$$;

CREATE FUNCTION @extschema@.claim(domain text, key text) RETURNS bigint
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.claim_impl(domain text, key text, invoker oid)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record := @extschema@.begin_handoff(domain, key);
BEGIN
    IF r.site = r.local THEN
        RAISE EXCEPTION 'key "%" of domain "%" is already owned by this site ("%")', r.k, (r.d).name, r.local
            USING ERRCODE = 'duplicate_object';
    ELSIF r.site IS NOT NULL THEN
        RAISE EXCEPTION 'cannot claim key "%" of domain "%": it is owned by site "%"', r.k, (r.d).name, r.site
            USING ERRCODE = 'SR001',
                  HINT = format('Have site "%s" transfer it with sor.transfer().', r.site);
    END IF;
    PERFORM @extschema@.set_owner(r.d, r.k, 'claim', NULL, r.local, r.epoch + 1, invoker);
    RETURN r.epoch + 1;
END
$$;

CREATE FUNCTION @extschema@.transfer(domain text, key text, to_site text)
    RETURNS bigint
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.transfer_impl(domain text, key text, to_site text,
                                          invoker oid)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    waiting text;
BEGIN
    PERFORM @extschema@.existing_site(to_site, 'target site');
    IF to_site = @extschema@.local_site() THEN
        RAISE EXCEPTION 'cannot transfer key "%" of domain "%" to the local site "%"',
                        key, domain, to_site
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A transfer hands a record this site owns to another site.';
    END IF;
    r := @extschema@.begin_handoff(domain, key);
    IF r.site IS NULL THEN
        RAISE EXCEPTION 'cannot transfer key "%" of domain "%": the record has no owner', r.k, (r.d).name
            USING ERRCODE = 'SR002',
                  HINT = 'Claim it with sor.claim() first.';
    ELSIF r.site <> r.local THEN
        RAISE EXCEPTION 'cannot transfer key "%" of domain "%": it is owned by site "%"', r.k, (r.d).name, r.site
            USING ERRCODE = 'SR001',
                  DETAIL = format('Only the owner transfers a record; this is site "%s".', r.local),
                  HINT = format('Call sor.transfer() at site "%s".', r.site);
    END IF;
    waiting := @extschema@.missing_acks(r.d, r.k);
    IF waiting IS NOT NULL THEN
        RAISE EXCEPTION 'cannot transfer key "%" of domain "%" yet: the hand-off to this site is not acknowledged by site %',
                        r.k, (r.d).name, waiting
            USING ERRCODE = 'SR005',
                  DETAIL = 'A site acknowledges a hand-off once it has applied every change the previous owner made before it.',
                  HINT = 'Try again once those sites have caught up; sor.handoffs shows what is in flight.';
    END IF;
    PERFORM @extschema@.set_owner(r.d, r.k, 'transfer', r.local, to_site, r.epoch + 1, invoker);
    RETURN r.epoch + 1;
END
$$;

CREATE FUNCTION @extschema@.takeover(domain text, key text) RETURNS bigint
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.takeover_impl(domain text, key text, invoker oid)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record := @extschema@.begin_handoff(domain, key);
BEGIN
    IF r.site IS NULL THEN
        RAISE EXCEPTION 'cannot take over key "%" of domain "%": the record has no owner', r.k, (r.d).name
            USING ERRCODE = 'SR002',
                  HINT = 'Claim it with sor.claim().';
    ELSIF r.site = r.local THEN
        RAISE EXCEPTION 'key "%" of domain "%" is already owned by this site ("%")', r.k, (r.d).name, r.local
            USING ERRCODE = 'duplicate_object';
    END IF;
    PERFORM @extschema@.set_owner(r.d, r.k, 'takeover', r.site, r.local, r.epoch + 1, invoker);
    RETURN r.epoch + 1;
END
$$;

CREATE FUNCTION @extschema@.takeover_site(failed_site text) RETURNS bigint
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.takeover_site_impl(failed_site text, invoker oid)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    local text := @extschema@.required_local_site();
    d @extschema@.domain;
    e record;
    taken bigint := 0;
BEGIN
    PERFORM @extschema@.existing_site(failed_site, 'failed site');
    IF failed_site = local THEN
        RAISE EXCEPTION 'cannot take over the records of the local site "%"', local
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- domains whose default owner was the failed site
    FOR d IN SELECT * FROM @extschema@.domain
              WHERE default_site = failed_site ORDER BY name FOR UPDATE
    LOOP
        PERFORM @extschema@.lock_domain_for_handoff(d.name);
        UPDATE @extschema@.domain
           SET default_site = local, default_epoch = default_epoch + 1
         WHERE name = d.name;
        PERFORM @extschema@.republish(d, NULL);
        INSERT INTO @extschema@.ownership_history
               (recorded_at_site, domain, key, action, from_site, to_site,
                epoch, changed_by)
        VALUES (local, d.name, NULL, 'takeover', failed_site, local,
                d.default_epoch + 1,
                (SELECT rolname FROM pg_roles WHERE oid = invoker));
        taken := taken + 1;
    END LOOP;

    -- records with an entry of their own: their rows first (the order of
    -- begin_handoff), then their domains, so that waiting for writers
    -- cannot deadlock with them
    PERFORM FROM @extschema@.owner_entry
      WHERE site = failed_site ORDER BY domain, key FOR UPDATE;
    PERFORM @extschema@.lock_domain_for_handoff(dm)
       FROM (SELECT DISTINCT domain FROM @extschema@.owner_entry
              WHERE site = failed_site ORDER BY 1) AS t(dm);
    FOR e IN SELECT * FROM @extschema@.owner_entry
              WHERE site = failed_site ORDER BY domain, key FOR UPDATE
    LOOP
        PERFORM @extschema@.lock_record_for_handoff(e.domain, e.key);
        d := @extschema@.existing_domain(e.domain);
        PERFORM @extschema@.set_owner(d, e.key, 'takeover', failed_site, local,
                                      e.epoch + 1, invoker);
        taken := taken + 1;
    END LOOP;
    RETURN taken;
END
$$;

/*
 * Catalog triggers (see the top of this file).
 */

CREATE TRIGGER catalog_changed BEFORE INSERT OR UPDATE OR DELETE
    ON @extschema@.site FOR EACH ROW
    EXECUTE FUNCTION @extschema@.catalog_changed();
CREATE TRIGGER catalog_changed BEFORE INSERT OR UPDATE OR DELETE
    ON @extschema@.local_identity FOR EACH ROW
    EXECUTE FUNCTION @extschema@.catalog_changed();
CREATE TRIGGER catalog_changed BEFORE INSERT OR UPDATE OR DELETE
    ON @extschema@.domain FOR EACH ROW
    EXECUTE FUNCTION @extschema@.catalog_changed('domain');
CREATE TRIGGER catalog_changed BEFORE INSERT OR UPDATE OR DELETE
    ON @extschema@.registered_table FOR EACH ROW
    EXECUTE FUNCTION @extschema@.catalog_changed();
CREATE TRIGGER catalog_changed BEFORE INSERT OR UPDATE OR DELETE
    ON @extschema@.owner_entry FOR EACH ROW
    EXECUTE FUNCTION @extschema@.catalog_changed('owner_entry');
CREATE TRIGGER catalog_truncated BEFORE TRUNCATE ON @extschema@.site
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.catalog_changed();
CREATE TRIGGER catalog_truncated BEFORE TRUNCATE ON @extschema@.local_identity
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.catalog_changed();
CREATE TRIGGER catalog_truncated BEFORE TRUNCATE ON @extschema@.domain
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.catalog_changed();
CREATE TRIGGER catalog_truncated BEFORE TRUNCATE ON @extschema@.registered_table
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.catalog_changed();
CREATE TRIGGER catalog_truncated BEFORE TRUNCATE ON @extschema@.owner_entry
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.catalog_changed();
ALTER TABLE @extschema@.site ENABLE ALWAYS TRIGGER catalog_changed;
ALTER TABLE @extschema@.site ENABLE ALWAYS TRIGGER catalog_truncated;
ALTER TABLE @extschema@.local_identity ENABLE ALWAYS TRIGGER catalog_changed;
ALTER TABLE @extschema@.local_identity ENABLE ALWAYS TRIGGER catalog_truncated;
ALTER TABLE @extschema@.domain ENABLE ALWAYS TRIGGER catalog_changed;
ALTER TABLE @extschema@.domain ENABLE ALWAYS TRIGGER catalog_truncated;
ALTER TABLE @extschema@.registered_table ENABLE ALWAYS TRIGGER catalog_changed;
ALTER TABLE @extschema@.registered_table ENABLE ALWAYS TRIGGER catalog_truncated;
ALTER TABLE @extschema@.owner_entry ENABLE ALWAYS TRIGGER catalog_changed;
ALTER TABLE @extschema@.owner_entry ENABLE ALWAYS TRIGGER catalog_truncated;

CREATE FUNCTION @extschema@.history_is_append_only() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'sor.ownership_history is append-only'
        USING ERRCODE = 'object_not_in_prerequisite_state';
END
$$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE
    ON @extschema@.ownership_history FOR EACH ROW
    EXECUTE FUNCTION @extschema@.history_is_append_only();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE
    ON @extschema@.ownership_history FOR EACH STATEMENT
    EXECUTE FUNCTION @extschema@.history_is_append_only();

/*
 * Command queue
 *
 * A command is a handler function and a jsonb payload, posted for a group.
 * Commands of one group run one at a time, in the order in which their
 * enqueuing transactions committed, by whichever consumer (background
 * worker or sor.drain() caller) holds the group's lock.  See src/queue.c.
 */

-- Commands waiting to run.  handler is kept as text (the function's
-- qualified signature), since pg_upgrade refuses regprocedure columns.
CREATE TABLE @extschema@.command (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_key       text COLLATE "C" NOT NULL,
    handler         text NOT NULL,
    payload         jsonb NOT NULL,
    enqueued_by     regrole NOT NULL,
    enqueued_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    last_attempt_at timestamptz
);
CREATE INDEX command_group_key_id ON @extschema@.command (group_key, id);

-- One row per group that has, or recently had, commands waiting: when its
-- first command may run next, and whether it is parked after too many
-- failures.  A producer holds a KEY SHARE lock on its group's row until it
-- commits; consumers change only non-key columns, so neither waits for the
-- other.  Rows of groups left without commands are deleted by
-- forget_empty_groups().
--
-- done_through is the id of the last command of the group that ran, set in
-- the transaction that deleted it.  Commands of a group get their ids in
-- the order in which they commit (src/queue.c), so none at or below it is
-- left: consumers look for the group's commands above it, and so do not
-- step over the index entries of the commands they deleted before vacuum
-- removes them (with a large backlog, thousands per group).
CREATE TABLE @extschema@.command_group (
    group_key       text COLLATE "C" PRIMARY KEY,
    next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    parked_at       timestamptz,
    done_through    bigint NOT NULL DEFAULT 0
);
-- Consumers read the ready groups in pages, in (next_attempt_at, group_key)
-- order: groups made by one transaction share its now().
CREATE INDEX command_group_ready
    ON @extschema@.command_group (next_attempt_at, group_key)
    WHERE parked_at IS NULL;

-- Commands taken out of the queue by sor.skip().
CREATE TABLE @extschema@.skipped_command (
    id              bigint PRIMARY KEY,
    group_key       text COLLATE "C" NOT NULL,
    handler         text NOT NULL,
    payload         jsonb NOT NULL,
    enqueued_by     regrole NOT NULL,
    enqueued_at     timestamptz NOT NULL,
    attempts        integer NOT NULL,
    last_error      text,
    skipped_by      name NOT NULL,
    skipped_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);

SELECT pg_catalog.pg_extension_config_dump('@extschema@.command', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.command_group', '');
-- and where command ids go on: a restore must not draw ids at or below a
-- group's done_through again
SELECT pg_catalog.pg_extension_config_dump(
    pg_catalog.pg_get_serial_sequence('@extschema@.command', 'id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.skipped_command', '');

-- Work waiting, per group.
CREATE VIEW @extschema@.queue AS
    SELECT g.group_key,
           (SELECT pg_catalog.count(*) FROM @extschema@.command c
             WHERE c.group_key OPERATOR(pg_catalog.=) g.group_key) AS pending,
           h.enqueued_at AS oldest_enqueued_at,
           pg_catalog.now() OPERATOR(pg_catalog.-) h.enqueued_at AS oldest_age,
           g.next_attempt_at, g.parked_at,
           h.attempts AS head_attempts, h.last_error AS head_last_error
      FROM @extschema@.command_group g
      JOIN LATERAL (SELECT c.enqueued_at, c.attempts, c.last_error
                      FROM @extschema@.command c
                     WHERE c.group_key OPERATOR(pg_catalog.=) g.group_key
                     ORDER BY c.id LIMIT 1) h ON true;

-- Commands that failed at least once and wait to be retried or skipped.
CREATE VIEW @extschema@.failed_commands AS
    SELECT c.id, c.group_key, c.handler, c.payload, c.enqueued_by,
           c.attempts, c.last_error, c.last_attempt_at,
           g.parked_at IS NOT NULL AS parked, g.next_attempt_at
      FROM @extschema@.command c
      JOIN @extschema@.command_group g USING (group_key)
     WHERE c.attempts OPERATOR(pg_catalog.>) 0;

-- Groups that stopped after their head command failed too often.
CREATE VIEW @extschema@.parked_groups AS
    SELECT g.group_key, g.parked_at,
           (SELECT pg_catalog.count(*) FROM @extschema@.command c
             WHERE c.group_key OPERATOR(pg_catalog.=) g.group_key) AS pending,
           h.id AS command_id, h.handler, h.attempts, h.last_error
      FROM @extschema@.command_group g
      LEFT JOIN LATERAL (SELECT c.id, c.handler, c.attempts, c.last_error
                           FROM @extschema@.command c
                          WHERE c.group_key OPERATOR(pg_catalog.=) g.group_key
                          ORDER BY c.id LIMIT 1) h ON true
     WHERE g.parked_at IS NOT NULL;

CREATE FUNCTION @extschema@.worker_status(
    OUT pid integer, OUT database name, OUT state text, OUT group_key text,
    OUT commands_run bigint, OUT started_at timestamptz)
    RETURNS SETOF record
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_worker_status';

-- The background workers of this database.
CREATE VIEW @extschema@.workers AS
    SELECT pid, state, group_key, commands_run, started_at
      FROM @extschema@.worker_status()
     WHERE database OPERATOR(pg_catalog.=) pg_catalog.current_database();

-- Take the lock that orders the producers of one group, and wake the
-- workers when the transaction commits.  Internal.
CREATE FUNCTION @extschema@.lock_group_for_enqueue(group_key text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_lock_group_for_enqueue';

-- Take the lock that consumers of one group hold (waiting for the one that
-- runs the group now), and wake the workers when the transaction commits.
-- Internal.
CREATE FUNCTION @extschema@.lock_group_for_change(group_key text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_lock_group_for_change';

-- Wake the launcher when the transaction commits (CREATE EXTENSION).
CREATE FUNCTION @extschema@.notify_launcher() RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_notify_launcher';

-- Delete the rows of up to max_groups groups that have no commands left,
-- skipping groups whose producers are still open.  Locks first, then looks
-- again under a new snapshot: a producer that committed in between is seen.
-- Returns how many rows went.  Internal.
CREATE FUNCTION @extschema@.forget_empty_groups(max_groups integer)
    RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keys text[];
    forgotten integer;
BEGIN
    SELECT array_agg(e.group_key) INTO keys
      FROM (SELECT g.group_key FROM @extschema@.command_group g
             WHERE NOT EXISTS (SELECT FROM @extschema@.command c
                                WHERE c.group_key = g.group_key
                                  AND c.id > g.done_through)
             LIMIT max_groups FOR UPDATE SKIP LOCKED) e;
    IF keys IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM @extschema@.command_group g
     WHERE g.group_key = ANY (keys)
       AND NOT EXISTS (SELECT FROM @extschema@.command c
                        WHERE c.group_key = g.group_key);
    GET DIAGNOSTICS forgotten = ROW_COUNT;
    RETURN forgotten;
END
$$;

CREATE FUNCTION @extschema@.enqueue(group_key text, handler regprocedure,
                                    payload jsonb DEFAULT '{}')
    RETURNS bigint
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.enqueue_impl(group_key text, handler regprocedure,
                                         payload jsonb, invoker oid)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p pg_proc;
    command_id bigint;
BEGIN
    PERFORM @extschema@.required(group_key, 'group key');
    IF handler IS NULL THEN
        RAISE EXCEPTION 'handler must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION 'payload must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass ''{}'' for a command without data.';
    END IF;
    SELECT * INTO p FROM pg_proc WHERE oid = handler;
    IF p.prokind <> 'f' OR p.proretset OR p.pronargs <> 1
       OR p.proargtypes[0] <> 'jsonb'::regtype THEN
        RAISE EXCEPTION 'function % cannot handle commands', handler
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'A handler is a function that takes one jsonb argument and returns no set.';
    END IF;
    IF NOT has_function_privilege(invoker, handler, 'EXECUTE') THEN
        RAISE EXCEPTION 'permission denied for function %', handler
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A command runs with the rights of the role that enqueues it, which must be allowed to execute its handler.';
    END IF;

    PERFORM @extschema@.lock_group_for_enqueue(group_key);
    INSERT INTO @extschema@.command (group_key, handler, payload, enqueued_by)
    VALUES (group_key, handler::text, payload, invoker)
    RETURNING id INTO command_id;
    -- keep the group's row from being forgotten until this commits
    PERFORM FROM @extschema@.command_group g
      WHERE g.group_key = enqueue_impl.group_key FOR KEY SHARE;
    IF NOT FOUND THEN
        -- (in REPEATABLE READ a row created after the snapshot makes this
        -- a serialization failure, which the caller may retry)
        INSERT INTO @extschema@.command_group (group_key) VALUES (group_key)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN command_id;
END
$$;

CREATE FUNCTION @extschema@.drain(max_commands integer DEFAULT NULL)
    RETURNS integer
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.drain_impl(max_commands integer, invoker oid)
    RETURNS integer
    LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'sor_drain_impl';

CREATE FUNCTION @extschema@.retry(group_key text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.retry_impl(group_key text, invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.required(group_key, 'group key');
    PERFORM @extschema@.lock_group_for_change(group_key);
    UPDATE @extschema@.command_group g
       SET parked_at = NULL, next_attempt_at = pg_catalog.now()
     WHERE g.group_key = retry_impl.group_key
       AND EXISTS (SELECT FROM @extschema@.command c
                    WHERE c.group_key = retry_impl.group_key);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'group "%" has no commands waiting', group_key
            USING ERRCODE = 'undefined_object';
    END IF;
    -- the head gets a full set of attempts again
    UPDATE @extschema@.command c SET attempts = 0
     WHERE c.id = (SELECT min(id) FROM @extschema@.command h
                    WHERE h.group_key = retry_impl.group_key);
END
$$;

CREATE FUNCTION @extschema@.skip(command_id bigint) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.skip_impl(command_id bigint, invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c @extschema@.command;
    g text;
BEGIN
    IF command_id IS NULL THEN
        RAISE EXCEPTION 'command id must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT group_key INTO g FROM @extschema@.command WHERE id = command_id;
    IF FOUND THEN
        -- wait for a consumer that runs the group now, then look again
        PERFORM @extschema@.lock_group_for_change(g);
        SELECT * INTO c FROM @extschema@.command WHERE id = command_id;
    END IF;
    IF c.id IS NULL THEN
        RAISE EXCEPTION 'command % is not waiting in the queue', command_id
            USING ERRCODE = 'undefined_object',
                  HINT = 'It may have run already, or been skipped before (see sor.skipped_command).';
    END IF;
    DELETE FROM @extschema@.command WHERE id = command_id;
    INSERT INTO @extschema@.skipped_command
           (id, group_key, handler, payload, enqueued_by, enqueued_at,
            attempts, last_error, skipped_by)
    VALUES (c.id, c.group_key, c.handler, c.payload, c.enqueued_by,
            c.enqueued_at, c.attempts, c.last_error,
            (SELECT rolname FROM pg_roles WHERE oid = invoker));
    UPDATE @extschema@.command_group cg
       SET parked_at = NULL, next_attempt_at = pg_catalog.now()
     WHERE cg.group_key = c.group_key;
END
$$;

/*
 * Sites together
 *
 * Copies travel by pglogical (see the README).  The functions here join
 * this database to the others, acknowledge hand-offs, and let an operator
 * see and settle what replication brought that was not applied.
 */

-- Command handler: this site acknowledges the hand-off of a record (run by
-- a worker, in a transaction of this site's own, so that the
-- acknowledgement travels in this site's stream).
CREATE FUNCTION @extschema@.acknowledge_handoff(payload jsonb) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.handoff_ack AS a (domain, key, site, epoch)
    VALUES (payload OPERATOR(pg_catalog.->>) 'domain',
            payload OPERATOR(pg_catalog.->>) 'key',
            @extschema@.required_local_site(),
            (payload OPERATOR(pg_catalog.->>) 'epoch')::bigint)
    ON CONFLICT (domain, key, site) DO UPDATE
       SET epoch = GREATEST(a.epoch, excluded.epoch),
           acked_at = pg_catalog.now()
$$;

-- Ask this site's workers to acknowledge a hand-off (called by the catalog
-- trigger while a transfer is applied).
CREATE FUNCTION @extschema@.request_ack(domain text, key text, epoch bigint)
    RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT @extschema@.enqueue('sor.handoff_ack',
                               '@extschema@.acknowledge_handoff(jsonb)'::regprocedure,
                               pg_catalog.jsonb_build_object('domain', domain,
                                                             'key', key,
                                                             'epoch', epoch))
$$;

-- pglogical, or an error that says how to get it.
CREATE FUNCTION @extschema@.require_pglogical(need_node boolean) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pglogical') THEN
        RAISE EXCEPTION 'extension "pglogical" is not installed'
            USING ERRCODE = 'undefined_object',
                  HINT = 'Run CREATE EXTENSION pglogical; the server needs wal_level = logical and shared_preload_libraries = ''pglogical, sor''.';
    END IF;
    IF need_node AND NOT @extschema@.is_node() THEN
        RAISE EXCEPTION 'this database is not a replication node yet'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call sor.create_node() first.';
    END IF;
END
$$;

-- Whether this database is a pglogical node.
CREATE FUNCTION @extschema@.is_node() RETURNS boolean
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found boolean;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pglogical') THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM pglogical.local_node)' INTO found;
    RETURN found;
END
$$;

-- The tables that travel between sites: the part of the sor catalog that
-- all sites share, and every registered table (its leaf partitions).
CREATE FUNCTION @extschema@.replicated_tables() RETURNS SETOF regclass
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t::regclass
      FROM pg_catalog.unnest(ARRAY['@extschema@.site', '@extschema@.domain',
                                   '@extschema@.owner_entry',
                                   '@extschema@.ownership_history',
                                   '@extschema@.handoff_ack']) AS t
    UNION ALL
    SELECT p
      FROM @extschema@.registered_table r,
           LATERAL @extschema@.table_and_partitions(r.tbl) AS p
     WHERE (SELECT c.relkind FROM pg_catalog.pg_class c
             WHERE c.oid OPERATOR(pg_catalog.=) p) OPERATOR(pg_catalog.=) 'r'
$$;

-- Put rel (and its partitions) in the replication set "sor", if this
-- database is a node.
CREATE FUNCTION @extschema@.replicate(rel regclass) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part regclass;
BEGIN
    IF NOT @extschema@.is_node() THEN
        RETURN;
    END IF;
    FOR part IN SELECT p FROM @extschema@.table_and_partitions(rel) p
                 WHERE (SELECT relkind FROM pg_class WHERE oid = p) = 'r'
    LOOP
        EXECUTE 'SELECT pglogical.replication_set_add_table($1, $2, false)
                  WHERE NOT EXISTS (SELECT FROM pglogical.tables
                                     WHERE set_name = $1
                                       AND format(''%I.%I'', nspname, relname)::regclass = $2)'
            USING 'sor', part;
    END LOOP;
END
$$;

CREATE FUNCTION @extschema@.create_node(dsn text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.create_node_impl(dsn text, invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    local text := @extschema@.required_local_site();
BEGIN
    PERFORM @extschema@.required(dsn, 'connection string');
    PERFORM @extschema@.require_pglogical(false);
    IF @extschema@.is_node() THEN
        RAISE EXCEPTION 'this database is already a replication node'
            USING ERRCODE = 'duplicate_object';
    END IF;
    EXECUTE 'SELECT pglogical.create_node(node_name := $1, dsn := $2)'
        USING local, dsn;
    EXECUTE 'SELECT pglogical.create_replication_set($1, replicate_insert := true,
                 replicate_update := true, replicate_delete := true,
                 replicate_truncate := false)'
        USING 'sor';
    PERFORM @extschema@.replicate(t) FROM @extschema@.replicated_tables() t;
END
$$;

CREATE FUNCTION @extschema@.subscribe(site text, dsn text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.subscribe_impl(site text, dsn text, invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    local text := @extschema@.required_local_site();
BEGIN
    PERFORM @extschema@.existing_site(site, 'site');
    PERFORM @extschema@.required(dsn, 'connection string');
    IF site = local THEN
        RAISE EXCEPTION 'cannot subscribe to the local site "%"', local
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM @extschema@.require_pglogical(true);
    -- forward_origins '{}': only changes made at that site, so nothing loops
    EXECUTE 'SELECT pglogical.create_subscription(subscription_name := $1,
                 provider_dsn := $2, replication_sets := ARRAY[''sor''],
                 synchronize_structure := false, synchronize_data := false,
                 forward_origins := ''{}'')'
        USING @extschema@.subscription_name(site), dsn;
END
$$;

-- The name of this site's subscription to site.
CREATE FUNCTION @extschema@.subscription_name(site text) RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('sor_%s_to_%s', site, @extschema@.local_site())
$$;

/*
 * The site whose changes arrive through the replication origin called
 * origin_name, or NULL.  A pglogical subscription's origin is named after
 * its slot, and its provider node after its site (sor.create_node).  A
 * built-in subscription's origin is pg_<oid>; name the subscription
 * sor_<site>_to_<local site>.  Any other replication tool may name its
 * origin sor_<site>.
 */
CREATE FUNCTION @extschema@.origin_site(origin_name text) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_site text;
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'pglogical') THEN
        EXECUTE 'SELECT n.node_name::text
                   FROM pglogical.subscription s
                   JOIN pglogical.node n ON n.node_id = s.sub_origin
                  WHERE s.sub_slot_name = $1'
            INTO found_site USING origin_name;
    END IF;
    IF found_site IS NULL THEN
        SELECT substring(s.subname from '^sor_(.*)_to_' || @extschema@.local_site() || '$')
          INTO found_site
          FROM pg_subscription s
         WHERE 'pg_' || s.oid = origin_name;
    END IF;
    IF found_site IS NULL THEN
        found_site := substring(origin_name from '^sor_(.*)$');
    END IF;
    RETURN (SELECT s.name FROM @extschema@.site s WHERE s.name = found_site);
END
$$;

/*
 * Visibility
 */

-- Every site: whether it is this one, how this site receives its changes
-- (the subscription's status) and how far behind it is in receiving this
-- site's changes (the replication slot of its subscription here), changes
-- from it set aside here, and hand-offs it has yet to acknowledge.
CREATE FUNCTION @extschema@.site_status(
    OUT site text, OUT is_local boolean, OUT subscription text,
    OUT subscription_status text, OUT sending_lag_bytes numeric,
    OUT replay_lag interval, OUT conflicts bigint,
    OUT acks_missing bigint)
    RETURNS SETOF record
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
    local text := @extschema@.local_site();
BEGIN
    FOR s IN SELECT name FROM @extschema@.site ORDER BY name LOOP
        site := s.name;
        is_local := s.name = local;
        subscription := NULL;
        subscription_status := NULL;
        sending_lag_bytes := NULL;
        replay_lag := NULL;
        IF NOT is_local AND @extschema@.is_node() THEN
            subscription := @extschema@.subscription_name(s.name);
            EXECUTE 'SELECT status FROM pglogical.show_subscription_status($1)'
                INTO subscription_status USING subscription;
            -- the sender of this site's changes to site: its subscription
            -- connects with the subscription's name
            SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), r.confirmed_flush_lsn),
                   a.replay_lag
              INTO sending_lag_bytes, replay_lag
              FROM pg_stat_replication a
              JOIN pg_replication_slots r ON r.active_pid = a.pid
             WHERE a.application_name = format('sor_%s_to_%s', local, s.name);
        END IF;
        SELECT count(*) INTO conflicts FROM @extschema@.conflict c
         WHERE c.origin_site = s.name;
        SELECT count(*) INTO acks_missing FROM @extschema@.handoffs h
         WHERE s.name = ANY (h.waiting_for);
        RETURN NEXT;
    END LOOP;
END
$$;

-- Hand-offs in flight: transfers whose new owner waits for other sites to
-- acknowledge them before it may write.
CREATE VIEW @extschema@.handoffs AS
    SELECT e.domain, e.key, e.from_site, e.site AS to_site, e.epoch,
           e.changed_at,
           pg_catalog.array_agg(s.name ORDER BY s.name) AS waiting_for
      FROM @extschema@.owner_entry e
      JOIN @extschema@.site s
        ON s.name OPERATOR(pg_catalog.<>) e.site
       AND s.name OPERATOR(pg_catalog.<>) e.from_site
     WHERE e.from_site IS NOT NULL
       AND NOT EXISTS (SELECT FROM @extschema@.handoff_ack a
                        WHERE a.domain OPERATOR(pg_catalog.=) e.domain
                          AND a.key OPERATOR(pg_catalog.=) e.key
                          AND a.site OPERATOR(pg_catalog.=) s.name
                          AND a.epoch OPERATOR(pg_catalog.>=) e.epoch)
     GROUP BY e.domain, e.key, e.from_site, e.site, e.epoch, e.changed_at;

CREATE VIEW @extschema@.sites AS
    SELECT * FROM @extschema@.site_status();

-- Changes set aside here (see sor.conflict).
CREATE VIEW @extschema@.conflicts AS
    SELECT id, noted_at, reason, origin_site, owner_site, epoch, tbl, domain,
           key, operation, old_row, new_row
      FROM @extschema@.conflict;

-- Writes refused here since the server started, per table, owner and
-- SQLSTATE (SR001 not the owner, SR002 no owner, SR005 hand-off not yet
-- acknowledged).
CREATE FUNCTION @extschema@.refused_write_counts(
    OUT tbl regclass, OUT owner_site text, OUT sqlstate text, OUT refused bigint,
    OUT last_refused_at timestamptz, OUT last_application_name text)
    RETURNS SETOF record
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_refused_write_counts';

CREATE VIEW @extschema@.refused_writes AS
    SELECT * FROM @extschema@.refused_write_counts();

-- The columns that name a row of rel: its primary key, else its replica
-- identity index.
CREATE FUNCTION @extschema@.row_identity(rel regclass) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols text;
BEGIN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n) INTO cols
      FROM (SELECT i.indrelid, i.indkey
              FROM pg_index i
             WHERE i.indrelid = rel AND (i.indisprimary OR i.indisreplident)
             ORDER BY i.indisprimary DESC LIMIT 1) x,
           LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
      JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum;
    IF cols IS NULL THEN
        RAISE EXCEPTION 'table "%" has no primary key', @extschema@.display_name(rel)
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN cols;
END
$$;

CREATE FUNCTION @extschema@.apply_conflict(id bigint) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

/*
 * Apply a set-aside change here, as a write of this site: the enforcement
 * trigger lets it through only at the record's owner, and it travels to the
 * other sites like any write.  An INSERT or UPDATE writes the row image
 * (updating the row with its identity, else inserting it); a DELETE deletes
 * the row with the old image's identity.
 */
CREATE FUNCTION @extschema@.apply_conflict_impl(id bigint, invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c @extschema@.conflict;
    cols text;
    ident text;
    updated bigint;
BEGIN
    c := @extschema@.existing_conflict(id);
    IF NOT has_table_privilege(invoker, c.tbl,
                               CASE c.operation WHEN 'DELETE' THEN 'DELETE'
                                                ELSE 'INSERT, UPDATE' END) THEN
        RAISE EXCEPTION 'permission denied for table %', @extschema@.display_name(c.tbl)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    ident := @extschema@.row_identity(c.tbl);
    IF c.operation = 'DELETE' THEN
        EXECUTE format('DELETE FROM %s WHERE (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $1))',
                       c.tbl, ident, ident, c.tbl)
            USING c.old_row;
    ELSE
        cols := @extschema@.insertable_columns(c.tbl);
        EXECUTE format('UPDATE %s SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $1))'
                       ' WHERE (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $2))',
                       c.tbl, cols, cols, c.tbl, ident, ident, c.tbl)
            USING c.new_row, coalesce(c.old_row, c.new_row);
        GET DIAGNOSTICS updated = ROW_COUNT;
        IF updated = 0 THEN
            EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE'
                           ' SELECT %s FROM jsonb_populate_record(NULL::%s, $1)',
                           c.tbl, cols, cols, c.tbl)
                USING c.new_row;
        END IF;
    END IF;
    DELETE FROM @extschema@.conflict x WHERE x.id = c.id;
END
$$;

CREATE FUNCTION @extschema@.discard_conflict(id bigint) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'sor_call_with_invoker';

CREATE FUNCTION @extschema@.discard_conflict_impl(id bigint, invoker oid)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @extschema@.existing_conflict(id);
    DELETE FROM @extschema@.conflict c WHERE c.id = discard_conflict_impl.id;
END
$$;

-- The set-aside change id, locked, or an error.
CREATE FUNCTION @extschema@.existing_conflict(id bigint)
    RETURNS @extschema@.conflict
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c @extschema@.conflict;
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION 'conflict id must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO c FROM @extschema@.conflict x WHERE x.id = existing_conflict.id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conflict % does not exist', id
            USING ERRCODE = 'undefined_object',
                  HINT = 'sor.conflicts lists the changes set aside at this site.';
    END IF;
    RETURN c;
END
$$;

CREATE TRIGGER catalog_changed BEFORE INSERT OR UPDATE OR DELETE
    ON @extschema@.handoff_ack FOR EACH ROW
    EXECUTE FUNCTION @extschema@.catalog_changed();
CREATE TRIGGER catalog_truncated BEFORE TRUNCATE ON @extschema@.handoff_ack
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.catalog_changed();
ALTER TABLE @extschema@.handoff_ack ENABLE ALWAYS TRIGGER catalog_changed;
ALTER TABLE @extschema@.handoff_ack ENABLE ALWAYS TRIGGER catalog_truncated;
CREATE TRIGGER takeover_arrived BEFORE INSERT
    ON @extschema@.ownership_history FOR EACH ROW
    EXECUTE FUNCTION @extschema@.catalog_changed('ownership_history');
ALTER TABLE @extschema@.ownership_history ENABLE REPLICA TRIGGER takeover_arrived;
/*
 * Privileges
 *
 * Everyone may read the catalog and ask who owns what.  Changing sites,
 * tables or ownership needs EXECUTE on the function, granted by an
 * administrator (see the README); the implementations and the lock
 * functions are for sor's own use.
 */

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA @extschema@ TO PUBLIC;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.local_site(),
    @extschema@.owner_of(text, text),
    @extschema@.canonical_key(text, text),
    @extschema@.key_type_family(regtype),
    @extschema@.enqueue(text, regprocedure, jsonb),
    @extschema@.drain(integer),
    @extschema@.worker_status(),
    @extschema@.missing_acks(text, text),
    @extschema@.site_status(),
    @extschema@.refused_write_counts()
    TO PUBLIC;

-- payloads and errors are for the roles an administrator lets see them
REVOKE SELECT ON @extschema@.command, @extschema@.skipped_command,
                 @extschema@.failed_commands, @extschema@.parked_groups,
                 @extschema@.conflict, @extschema@.conflicts
    FROM PUBLIC;

-- background workers find this database from now on
SELECT @extschema@.notify_launcher();
