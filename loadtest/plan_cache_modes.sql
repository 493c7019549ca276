-- redeem_many() as PostgreSQL plans it when left to itself, for loadtest.pgcost A/B:
-- redeem_many_auto() (custom plans, or after five calls perhaps one generic plan kept for the
-- connection, whatever its shape) and redeem_many_custom() (planned afresh on every call).
--     python -m loadtest.pgcost --setup loadtest/plan_cache_modes.sql \
--         --variants redeem_many,redeem_many_auto,redeem_many_custom --batch 8
DO $$
DECLARE
    def  text := pg_get_functiondef('redeem_many'::regproc);
    mode text;
BEGIN
    -- pg_get_functiondef() writes each SET on a line of its own
    def := regexp_replace(def, '\n SET enable_\w+ TO ''off''', '', 'g');
    FOREACH mode IN ARRAY ARRAY['auto', 'custom'] LOOP
        EXECUTE replace(
            replace(def, 'public.redeem_many(', 'public.redeem_many_' || mode || '('),
            'force_generic_plan', CASE mode WHEN 'auto' THEN 'auto' ELSE 'force_custom_plan' END);
    END LOOP;
END $$;
