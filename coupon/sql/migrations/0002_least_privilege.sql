-- 0.1.0 -> 0.2.0: PostgreSQL 15, and least privilege. Run once by the 0.1.0 schema's owner or a
-- superuser; from here on the login role coupon_owner owns the database and every object.

-- Everything of the schema passes to coupon_owner (identity sequences follow their tables).
DO $$
DECLARE
    cmd text;
BEGIN
    FOR cmd IN
        SELECT format('ALTER %s %s OWNER TO coupon_owner',
                      CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
          AND c.relowner <> 'coupon_owner'::regrole
          AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0)
        UNION ALL
        SELECT format('ALTER ROUTINE %s OWNER TO coupon_owner', p.oid::regprocedure)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proowner <> 'coupon_owner'::regrole
    LOOP
        EXECUTE cmd;
    END LOOP;
    ALTER SCHEMA coupon_staging OWNER TO coupon_owner;
    EXECUTE format('ALTER DATABASE %I OWNER TO coupon_owner', current_database());
END $$;

-- PostgreSQL 15 has no pg_input_is_valid(): a slower check there.
DO $do$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        EXECUTE $f$
CREATE OR REPLACE FUNCTION national_id_number(nid text) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN (CASE WHEN octet_length(nid) = 10 AND pg_input_is_valid('1' || nid, 'int8')
             THEN '1' || nid END)::int8 - 10000000000$f$;
    ELSE
        EXECUTE $f$
CREATE OR REPLACE FUNCTION national_id_number(nid text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (CASE WHEN octet_length(nid) = 10 AND ltrim(nid, '0123456789') = ''
             THEN nid END)::int8$f$;
    END IF;
END $do$;

-- Ledger rows enter only through the terminal functions, which run as the owner.
REVOKE INSERT ON ledger FROM coupon_writer;
ALTER FUNCTION
    redeem_many(bigint[], text[], text[], bytea[], text[], bigint[], text[], boolean[], integer)
    SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION reverse(bigint, text, text, bytea, text, integer)
    SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION
    redeem_many(bigint[], text[], text[], bytea[], text[], bigint[], text[], boolean[], integer),
    reverse(bigint, text, text, bytea, text, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    redeem_many(bigint[], text[], text[], bytea[], text[], bigint[], text[], boolean[], integer),
    reverse(bigint, text, text, bytea, text, integer)
    TO coupon_writer;

-- No temporary tables are used; the writer and reader only connect.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM coupon_writer, coupon_reader',
                   current_database());
END $$;

-- Migrations are recorded in schema_migrations now.
DELETE FROM schema_meta WHERE key = 'schema_sha256';
