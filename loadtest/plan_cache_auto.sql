-- redeem_many_auto(): redeem_many() as it was before it forced generic plans -- the same
-- function, with PL/pgSQL left to choose a custom or generic plan per statement ("auto").
--     python -m loadtest.pgcost --setup loadtest/plan_cache_auto.sql \
--         --variants redeem_many,redeem_many_auto --batch 16
DO $$
BEGIN
    EXECUTE regexp_replace(
        replace(pg_get_functiondef('redeem_many'::regproc),
                'public.redeem_many(', 'public.redeem_many_auto('),
        '\n SET plan_cache_mode TO ''force_generic_plan''', '');
END $$;
