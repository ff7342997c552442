-- bench/sql/enforce.sql: the enforcement benchmark's database (run once, as
-- the superuser).  Four variants of one table shape, each in a schema
-- <scenario>_<variant>:
--   plain    unregistered (the limit)
--   sor      registered with sor.register_table()
--   plpgsql  the same rule by hand: a PL/pgSQL BEFORE ROW trigger that asks
--            sor.owner_of() and compares with sor.local_site()
--   rls      row-level security: a WITH CHECK policy on an owner column
--            compared with a setting
--   noop     a C BEFORE ROW trigger that does nothing (bench/noop): what
--            any row trigger costs before its function does any work, the
--            floor of sor's design
-- pgbench runs as the role bench, which owns nothing (so RLS applies to it).

CREATE EXTENSION sor;
SELECT sor.add_site('a'), sor.add_site('b');
SELECT sor.set_local_site('a');

CREATE ROLE bench LOGIN;
GRANT pg_read_server_files TO bench;            -- COPY FROM a file
ALTER ROLE bench SET bench.site = 'a';          -- the site, for the RLS design

-- The floor: a C row trigger that does nothing (bench/noop/noop_trigger.c).
CREATE FUNCTION public.noop_trigger() RETURNS trigger
    LANGUAGE c AS 'noop_trigger', 'noop_trigger';

-- What a user would write without sor: one owner lookup per key.
CREATE FUNCTION public.by_hand_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        IF sor.owner_of(TG_ARGV[0], OLD.id::text) IS DISTINCT FROM sor.local_site() THEN
            RAISE EXCEPTION 'key % is not owned by this site', OLD.id;
        END IF;
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id) THEN
        IF sor.owner_of(TG_ARGV[0], NEW.id::text) IS DISTINCT FROM sor.local_site() THEN
            RAISE EXCEPTION 'key % is not owned by this site', NEW.id;
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;

-- Put one table under the variant's rule and let bench write it.  The
-- first sor table of a domain creates it, with default_site if given.
CREATE FUNCTION public.bench_guard(tbl regclass, variant text, dom text,
                                   default_site text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    CASE variant
    WHEN 'plain' THEN
        NULL;
    WHEN 'sor' THEN
        IF default_site IS NULL OR EXISTS (SELECT FROM sor.domain WHERE name = dom) THEN
            PERFORM sor.register_table(tbl, 'id', dom);
        ELSE
            PERFORM sor.register_table(tbl, 'id', dom, default_site => default_site);
        END IF;
    WHEN 'plpgsql' THEN
        EXECUTE format('CREATE TRIGGER by_hand_guard BEFORE INSERT OR UPDATE OR DELETE'
                       ' ON %s FOR EACH ROW EXECUTE FUNCTION public.by_hand_guard(%L)',
                       tbl, dom);
    WHEN 'noop' THEN
        EXECUTE format('CREATE TRIGGER noop BEFORE INSERT OR UPDATE OR DELETE'
                       ' ON %s FOR EACH ROW EXECUTE FUNCTION public.noop_trigger()',
                       tbl);
    WHEN 'rls' THEN
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('CREATE POLICY reader ON %s FOR SELECT USING (true)', tbl);
        EXECUTE format('CREATE POLICY writer ON %s FOR INSERT'
                       ' WITH CHECK (owner = current_setting(''bench.site''))', tbl);
        EXECUTE format('CREATE POLICY updater ON %s FOR UPDATE'
                       ' USING (owner = current_setting(''bench.site''))'
                       ' WITH CHECK (owner = current_setting(''bench.site''))', tbl);
        EXECUTE format('CREATE POLICY deleter ON %s FOR DELETE'
                       ' USING (owner = current_setting(''bench.site''))', tbl);
    END CASE;
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO bench', tbl);
END
$$;

-- An empty table of the benchmark's shape, under the variant's rule.
CREATE FUNCTION public.bench_table(schema text, name text, variant text,
                                   dom text, default_site text,
                                   primary_key boolean) RETURNS regclass
    LANGUAGE plpgsql AS $$
DECLARE
    tbl regclass;
BEGIN
    EXECUTE format('CREATE TABLE %I.%I (id bigint NOT NULL %s,'
                   ' owner text NOT NULL DEFAULT ''a'', v integer NOT NULL DEFAULT 0)',
                   schema, name, CASE WHEN primary_key THEN 'PRIMARY KEY' ELSE '' END);
    tbl := format('%I.%I', schema, name)::regclass;
    PERFORM public.bench_guard(tbl, variant, dom, default_site);
    RETURN tbl;
END
$$;

-- A scenario's schemas: upd (n rows, keys 1..n, for single-row UPDATE)
-- and ins (empty, for single-row INSERT) in every variant.  The rows are
-- loaded before the rule is put on (loading is not what is measured).
CREATE PROCEDURE public.bench_scenario(scen text, n bigint, dom text,
                                       default_site text)
    LANGUAGE plpgsql AS $$
DECLARE
    variant text;
    s text;
BEGIN
    FOREACH variant IN ARRAY ARRAY['plain', 'sor', 'plpgsql', 'rls', 'noop'] LOOP
        s := scen || '_' || variant;
        EXECUTE format('CREATE SCHEMA %I', s);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO bench', s);
        EXECUTE format('CREATE TABLE %I.upd (id bigint PRIMARY KEY,'
                       ' owner text NOT NULL DEFAULT ''a'', v integer NOT NULL DEFAULT 0)', s);
        EXECUTE format('INSERT INTO %I.upd (id) SELECT generate_series(1, %s)', s, n);
        COMMIT;
        PERFORM public.bench_guard(format('%I.upd', s)::regclass, variant, dom, default_site);
        PERFORM public.bench_table(s, 'ins', variant, dom, default_site, false);
        COMMIT;
    END LOOP;
END
$$;
