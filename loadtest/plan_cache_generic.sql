-- redeem_many_generic(): redeem_many() on generic plans -- the same function, with PL/pgSQL
-- told to plan each statement once per connection instead of choosing per call ("auto").
--     python -m loadtest.pgcost --setup loadtest/plan_cache_generic.sql \
--         --variants redeem_many,redeem_many_generic --batch 8
-- Not kept (BENCHMARKS.md): a generic plan is made once, on the table sizes of that moment.
DO $$
BEGIN
    EXECUTE replace(
        replace(pg_get_functiondef('redeem_many'::regproc),
                'public.redeem_many(', 'public.redeem_many_generic('),
        E'\n LANGUAGE plpgsql\n', E'\n LANGUAGE plpgsql\n SET plan_cache_mode TO ''force_generic_plan''\n');
END $$;
