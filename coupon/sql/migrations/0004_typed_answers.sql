-- Answers stored and returned as typed columns: the terminal functions say what happened
-- (outcome, reason, ids, amounts), coupon/answers.py makes the HTTP status and body of it.

ALTER TABLE terminal_requests
    ADD COLUMN outcome text,
    ADD COLUMN reason text,
    ADD COLUMN entry_id bigint,
    ADD COLUMN amount bigint,
    ADD COLUMN remaining bigint,
    ADD COLUMN tranche_id bigint,
    ADD COLUMN province text,
    ADD COLUMN merchant_id bigint;
UPDATE terminal_requests
SET outcome = response->>'status',
    reason = response->>'reason',
    entry_id = coalesce(response->>'redemption_id', response->>'reversal_id')::bigint,
    amount = (response->>'amount')::bigint,
    remaining = (response->>'remaining')::bigint,
    tranche_id = (response->>'tranche_id')::bigint,
    province = response->>'province',
    merchant_id = (response->>'merchant_id')::bigint;
ALTER TABLE terminal_requests
    ALTER COLUMN outcome SET NOT NULL,
    ADD CONSTRAINT terminal_requests_outcome_check
        CHECK (outcome IN ('approved', 'declined', 'reversed', 'pending_original')),
    DROP COLUMN http_status,
    DROP COLUMN response;

DROP FUNCTION redeem_many(bigint[], text[], text[], bytea[], text[], bigint[], text[], boolean[],
                          integer);
DROP FUNCTION reverse(bigint, text, text, bytea, text, integer);
DROP FUNCTION balance_inquiry(bigint, text, text);

CREATE OR REPLACE FUNCTION redeem_many(
    p_terminal_ids bigint[], p_nonces text[], p_request_ids text[], p_body_hashes bytea[],
    p_national_ids text[], p_amounts bigint[], p_categories text[], p_allow_partial boolean[],
    p_shards integer)
RETURNS TABLE (n integer, outcome text, reason text, entry_id bigint, amount bigint,
               remaining bigint, tranche_id bigint, province text, merchant_id bigint,
               created_at timestamptz, replayed boolean)
LANGUAGE plpgsql SECURITY DEFINER
-- Every statement here is a probe by key, and the planner is told so: no sequential scans,
-- no hash or merge joins. Then no statistics -- stale, or of a table analysed while it was
-- empty -- can turn a probe into a scan of a grown table, and one generic plan per connection
-- is safe: planned once, not per call. tests/integration/test_connections.py analyses the
-- tables empty, lets them grow and counts the scans; the figures are in BENCHMARKS.md.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_shard   integer := pg_backend_pid() % p_shards;
    tr        record;
    r         record;
    fresh_t   bigint[];
    fresh_n   text[];
    -- the answer of each element
    dims      integer[] := ARRAY[cardinality(p_terminal_ids)];
    a_outcome text[] := array_fill(NULL::text, dims);
    a_reason  text[] := array_fill(NULL::text, dims);
    a_entry   bigint[] := array_fill(NULL::bigint, dims);
    a_amount  bigint[] := array_fill(NULL::bigint, dims);
    a_left    bigint[] := array_fill(NULL::bigint, dims);
    a_tranche bigint[] := array_fill(NULL::bigint, dims);
    a_province text[] := array_fill(NULL::text, dims);
    a_merchant bigint[] := array_fill(NULL::bigint, dims);
    a_at      timestamptz[] := array_fill(NULL::timestamptz, dims);
    a_replay  boolean[] := array_fill(false, dims);
    stored    integer[] := '{}';  -- elements whose answer is new: stored for replays
    copies    integer[] := '{}';  -- repeats of an element of this batch, and of which
    copy_of   integer[] := '{}';
    -- approvals, in walk order
    ok_i      integer[] := '{}';
    ok_amount bigint[] := '{}';
    ok_left   bigint[] := '{}';
    ok_merchant bigint[] := '{}';
    ok_province text[] := '{}';
    seqs      bigint[];
    -- counter deltas: per province of the tranche, and per province of all tranches
    c_province text[];
    c_tx      bigint[];
    c_amount  bigint[];
    c_served  bigint[];
    c_all_province text[];
    c_all_served   bigint[];
    cur_nid   text;
    bal       bigint;
    why       text;
    approved  bigint;
    i         integer;
    j         integer;
BEGIN
    PERFORM ledger_write_lock();
    PERFORM terminal_request_lock(k.t, k.r)
    FROM (SELECT DISTINCT u.t, u.r FROM unnest(p_terminal_ids, p_request_ids) AS u(t, r)
          ORDER BY u.t, u.r) k;
    WITH ins AS (
        INSERT INTO terminal_nonces (terminal_id, nonce)
        SELECT DISTINCT u.t, u.nc FROM unnest(p_terminal_ids, p_nonces) AS u(t, nc)
        ON CONFLICT DO NOTHING
        RETURNING terminal_id, nonce)
    SELECT array_agg(ins.terminal_id), array_agg(ins.nonce) INTO fresh_t, fresh_n FROM ins;
    SELECT t.id, t.categories INTO tr FROM tranches t
    WHERE tstzrange(t.starts_at, t.ends_at) @> now();
    IF tr.id IS NOT NULL THEN
        PERFORM FROM entitlements e
        WHERE e.tranche_id = tr.id AND e.national_id = ANY (p_national_ids)
        ORDER BY e.national_id FOR UPDATE;
    END IF;

    FOR r IN
        WITH u AS (
            SELECT x.i::integer AS i, x.t, x.nc, x.rid, x.nid,
                   (f.t IS NOT NULL AND row_number() OVER (
                        PARTITION BY x.t, x.nc ORDER BY x.nid, x.i) = 1) AS nonce_ok
            FROM unnest(p_terminal_ids, p_nonces, p_request_ids, p_national_ids)
                 WITH ORDINALITY AS x(t, nc, rid, nid, i)
            LEFT JOIN unnest(fresh_t, fresh_n) AS f(t, nc) ON f.t = x.t AND f.nc = x.nc),
        w AS (
            SELECT u.*, first_value(u.i) OVER (
                       PARTITION BY u.t, u.rid, u.nonce_ok ORDER BY u.nid, u.i) AS first_i
            FROM u)
        -- each lookup a probe of a primary key per element, whatever the statistics say: LIMIT
        -- keeps the planner from turning them into joins, and a hash join over a table it
        -- once saw small is a scan of the whole table per batch once the plan is cached
        SELECT w.i, w.nid, w.nonce_ok, w.first_i,
               pr.kind AS prior_kind, pr.body_hash AS prior_hash, pr.outcome AS prior_outcome,
               pr.reason AS prior_reason, pr.entry_id AS prior_entry, pr.amount AS prior_amount,
               pr.remaining AS prior_left, pr.tranche_id AS prior_tranche,
               pr.province AS prior_province, pr.merchant_id AS prior_merchant,
               pr.created_at AS prior_at,
               tm.status AS terminal_status, tm.merchant_id, tm.merchant_status,
               EXISTS (SELECT FROM pending_reversals pv
                       WHERE pv.terminal_id = w.t AND pv.original_request_id = w.rid) AS reversed,
               h.status AS household_status, e.balance, e.opens_at, e.province
        FROM w
        LEFT JOIN LATERAL (SELECT * FROM terminal_requests pr
                           WHERE pr.terminal_id = w.t AND pr.request_id = w.rid LIMIT 1) pr
               ON true
        LEFT JOIN LATERAL (SELECT t.status, t.merchant_id, m.status AS merchant_status
                           FROM terminals t JOIN merchants m ON m.id = t.merchant_id
                           WHERE t.id = w.t LIMIT 1) tm ON true
        LEFT JOIN LATERAL (SELECT * FROM households h WHERE h.national_id = w.nid LIMIT 1) h
               ON true
        LEFT JOIN LATERAL (SELECT * FROM entitlements e
                           WHERE e.national_id = w.nid AND e.tranche_id = tr.id LIMIT 1) e
               ON true
        ORDER BY w.nid, w.i
    LOOP
        i := r.i;
        IF NOT r.nonce_ok THEN
            a_outcome[i] := 'nonce_reused'; CONTINUE;
        END IF;
        IF r.prior_kind IS NOT NULL THEN
            IF r.prior_kind <> 'redemption' OR r.prior_hash <> p_body_hashes[i] THEN
                a_outcome[i] := 'idempotency_conflict'; CONTINUE;
            END IF;
            a_outcome[i] := r.prior_outcome; a_reason[i] := r.prior_reason;
            a_entry[i] := r.prior_entry; a_amount[i] := r.prior_amount;
            a_left[i] := r.prior_left; a_tranche[i] := r.prior_tranche;
            a_province[i] := r.prior_province; a_merchant[i] := r.prior_merchant;
            a_at[i] := r.prior_at; a_replay[i] := true;
            CONTINUE;
        END IF;
        IF r.first_i <> i THEN
            IF p_body_hashes[r.first_i] <> p_body_hashes[i] THEN
                a_outcome[i] := 'idempotency_conflict'; CONTINUE;
            END IF;
            copies := copies || i; copy_of := copy_of || r.first_i;  -- answered at the end
            CONTINUE;
        END IF;

        IF cur_nid IS DISTINCT FROM r.nid THEN
            cur_nid := r.nid; bal := r.balance;
        END IF;
        approved := NULL;
        why := CASE
            WHEN r.terminal_status <> 'active' THEN 'terminal_suspended'
            WHEN r.merchant_status <> 'active' THEN 'merchant_suspended'
            WHEN r.reversed THEN 'reversed'
            WHEN r.household_status IS NULL THEN 'household_not_found'
            WHEN r.household_status <> 'active' THEN 'household_suspended'
            WHEN tr.id IS NULL THEN 'no_active_tranche'
            WHEN r.balance IS NULL THEN 'not_eligible'
            WHEN now() < r.opens_at THEN 'not_open_yet'
            WHEN NOT (string_to_array(p_categories[i], ',') <@ tr.categories)
                THEN 'category_not_allowed'
        END;
        IF why IS NULL THEN
            IF bal >= p_amounts[i] THEN
                approved := p_amounts[i];
            ELSIF p_allow_partial[i] AND bal > 0 THEN
                approved := bal;
            ELSE
                why := 'insufficient_balance';
            END IF;
        END IF;
        stored := stored || i;
        a_at[i] := now();
        IF why IS NOT NULL THEN
            a_outcome[i] := 'declined'; a_reason[i] := why;
        ELSE
            bal := bal - approved;
            a_outcome[i] := 'approved'; a_amount[i] := approved; a_left[i] := bal;
            a_tranche[i] := tr.id; a_province[i] := r.province; a_merchant[i] := r.merchant_id;
            ok_i := ok_i || i; ok_amount := ok_amount || approved; ok_left := ok_left || bal;
            ok_merchant := ok_merchant || r.merchant_id; ok_province := ok_province || r.province;
        END IF;
    END LOOP;

    IF cardinality(ok_i) > 0 THEN
        WITH ins AS (
            INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, province,
                                tranche_id, amount)
            SELECT 'redemption', p_request_ids[x.i], p_terminal_ids[x.i], x.merchant,
                   p_national_ids[x.i], x.province, tr.id, x.amount
            FROM unnest(ok_i, ok_amount, ok_merchant, ok_province) WITH ORDINALITY
                 AS x(i, amount, merchant, province, k)
            ORDER BY x.k
            RETURNING seq, terminal_id, request_id)
        SELECT array_agg(ins.seq ORDER BY x.k) INTO seqs
        FROM ins JOIN unnest(ok_i) WITH ORDINALITY AS x(i, k)
          ON ins.terminal_id = p_terminal_ids[x.i] AND ins.request_id = p_request_ids[x.i];
        FOR k IN 1 .. cardinality(ok_i) LOOP
            a_entry[ok_i[k]] := seqs[k];
        END LOOP;

        -- balances and open redemptions per household, and who became served (0 -> some)
        WITH spent AS (
            SELECT p_national_ids[x.i] AS nid, sum(x.amount)::bigint AS amount,
                   count(*)::integer AS k
            FROM unnest(ok_i, ok_amount) AS x(i, amount) GROUP BY 1),
        ent AS (
            UPDATE entitlements e
            SET balance = e.balance - s.amount, open_redemptions = e.open_redemptions + s.k
            FROM spent s WHERE e.national_id = s.nid AND e.tranche_id = tr.id
            RETURNING e.national_id, e.province, s.amount, s.k,
                      e.open_redemptions = s.k AS newly_served),
        hh AS (
            UPDATE households h
            SET open_redemptions = h.open_redemptions + ent.k,
                served_province = CASE WHEN h.open_redemptions = 0 THEN ent.province
                                       ELSE h.served_province END
            FROM ent WHERE h.national_id = ent.national_id
            RETURNING h.served_province, h.open_redemptions = ent.k AS newly_served),
        by_province AS (
            SELECT ent.province, sum(ent.k)::bigint AS tx, sum(ent.amount)::bigint AS amount,
                   count(*) FILTER (WHERE ent.newly_served) AS served
            FROM ent GROUP BY ent.province),
        by_province_all AS (
            SELECT hh.served_province AS province, count(*) AS served
            FROM hh WHERE hh.newly_served GROUP BY hh.served_province)
        SELECT t.provinces, t.txs, t.amounts, t.served, a.provinces, a.served
        INTO c_province, c_tx, c_amount, c_served, c_all_province, c_all_served
        FROM (SELECT array_agg(province) AS provinces, array_agg(tx) AS txs,
                     array_agg(amount) AS amounts, array_agg(served) AS served
              FROM by_province) t,
             (SELECT array_agg(province) AS provinces, array_agg(served) AS served
              FROM by_province_all) a;
        PERFORM counters_apply(v_shard, tr.id, c_province, c_tx, c_amount, c_served,
                               coalesce(c_all_province, '{}'), coalesce(c_all_served, '{}'));
    END IF;
    FOR k IN 1 .. cardinality(copies) LOOP
        i := copies[k]; j := copy_of[k];
        a_outcome[i] := a_outcome[j]; a_reason[i] := a_reason[j]; a_entry[i] := a_entry[j];
        a_amount[i] := a_amount[j]; a_left[i] := a_left[j]; a_tranche[i] := a_tranche[j];
        a_province[i] := a_province[j]; a_merchant[i] := a_merchant[j]; a_at[i] := a_at[j];
        a_replay[i] := true;
    END LOOP;
    INSERT INTO terminal_requests (terminal_id, request_id, kind, body_hash, created_at, outcome,
                                   reason, entry_id, amount, remaining, tranche_id, province,
                                   merchant_id)
    SELECT p_terminal_ids[x.i], p_request_ids[x.i], 'redemption', p_body_hashes[x.i], a_at[x.i],
           a_outcome[x.i], a_reason[x.i], a_entry[x.i], a_amount[x.i], a_left[x.i],
           a_tranche[x.i], a_province[x.i], a_merchant[x.i]
    FROM unnest(stored) AS x(i);
    RETURN QUERY SELECT x.i::integer, a_outcome[x.i], a_reason[x.i], a_entry[x.i], a_amount[x.i],
                        a_left[x.i], a_tranche[x.i], a_province[x.i], a_merchant[x.i], a_at[x.i],
                        a_replay[x.i]
                 FROM generate_subscripts(p_terminal_ids, 1) AS x(i);
END $$;

CREATE OR REPLACE FUNCTION reverse(
    p_terminal_id bigint, p_nonce text, p_request_id text, p_body_hash bytea,
    p_original_request_id text, p_shards integer,
    OUT outcome text, OUT entry_id bigint, OUT amount bigint, OUT remaining bigint,
    OUT replayed boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET plan_cache_mode = force_generic_plan  -- key probes only, as redeem_many()
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    prior      terminal_requests%ROWTYPE;
    original   terminal_requests%ROWTYPE;
    orig       ledger%ROWTYPE;
    ent_open   integer;
    hh_open    integer;
    served_in  text;
    entry      record;
    v_shard    integer := pg_backend_pid() % p_shards;
BEGIN
    replayed := false;
    PERFORM ledger_write_lock();  -- first, as in redeem_many()
    IF NOT terminal_nonce_fresh(p_terminal_id, p_nonce) THEN
        outcome := 'nonce_reused'; RETURN;
    END IF;
    -- both keys, in a fixed order: the reversal's own, and its original's (which a late
    -- original redemption locks too, so the two never pass each other)
    PERFORM terminal_request_lock(p_terminal_id, least(p_request_id, p_original_request_id));
    PERFORM terminal_request_lock(p_terminal_id, greatest(p_request_id, p_original_request_id));
    SELECT * INTO prior FROM terminal_requests
    WHERE terminal_id = p_terminal_id AND request_id = p_request_id;
    IF FOUND THEN
        IF prior.kind <> 'reversal' OR prior.body_hash <> p_body_hash THEN
            outcome := 'idempotency_conflict'; RETURN;
        END IF;
        outcome := prior.outcome; entry_id := prior.entry_id; amount := prior.amount;
        remaining := prior.remaining; replayed := true; RETURN;
    END IF;

    SELECT * INTO original FROM terminal_requests
    WHERE terminal_id = p_terminal_id AND request_id = p_original_request_id;
    IF NOT FOUND THEN
        IF EXISTS (SELECT FROM ledger WHERE kind = 'redemption'
                   AND request_id = p_original_request_id AND terminal_id <> p_terminal_id) THEN
            outcome := 'not_your_transaction'; RETURN;
        END IF;
        INSERT INTO pending_reversals (terminal_id, original_request_id, request_id)
        VALUES (p_terminal_id, p_original_request_id, p_request_id)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            outcome := 'already_reversed'; RETURN;
        END IF;
        outcome := 'pending_original';
    ELSIF original.kind <> 'redemption' THEN
        outcome := 'not_a_redemption'; RETURN;
    ELSIF original.outcome <> 'approved' THEN
        -- declined (possibly because this very reversal's tombstone got there first)
        IF EXISTS (SELECT FROM pending_reversals WHERE terminal_id = p_terminal_id
                   AND original_request_id = p_original_request_id) THEN
            outcome := 'already_reversed'; RETURN;
        END IF;
        outcome := 'original_declined'; RETURN;
    ELSE
        SELECT * INTO orig FROM ledger WHERE seq = original.entry_id;
        IF EXISTS (SELECT FROM ledger WHERE reverses = orig.seq) THEN
            outcome := 'already_reversed'; RETURN;
        END IF;
        IF orig.created_at < now() - interval '24 hours' THEN
            outcome := 'reversal_window_closed'; RETURN;
        END IF;
        UPDATE entitlements
        SET balance = balance + orig.amount, open_redemptions = open_redemptions - 1
        WHERE national_id = orig.national_id AND tranche_id = orig.tranche_id
        RETURNING balance, open_redemptions INTO remaining, ent_open;
        -- served_province cannot change under us: this redemption keeps the count >= 1
        UPDATE households h
        SET open_redemptions = h.open_redemptions - 1,
            served_province = CASE WHEN h.open_redemptions = 1 THEN NULL
                                   ELSE h.served_province END
        FROM (SELECT served_province FROM households WHERE national_id = orig.national_id) old
        WHERE h.national_id = orig.national_id
        RETURNING h.open_redemptions, old.served_province INTO hh_open, served_in;
        INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, province,
                            tranche_id, amount, reverses)
        VALUES ('reversal', p_request_id, p_terminal_id, orig.merchant_id, orig.national_id,
                orig.province, orig.tranche_id, orig.amount, orig.seq)
        RETURNING seq, created_at INTO entry;
        PERFORM counters_apply(
            v_shard, orig.tranche_id, ARRAY[orig.province], ARRAY[-1::bigint],
            ARRAY[-orig.amount], ARRAY[-(ent_open = 0)::int::bigint],
            CASE WHEN hh_open = 0 THEN ARRAY[served_in] ELSE '{}' END,
            CASE WHEN hh_open = 0 THEN ARRAY[-1::bigint] ELSE '{}' END);
        outcome := 'reversed'; entry_id := entry.seq; amount := orig.amount;
    END IF;
    INSERT INTO terminal_requests (terminal_id, request_id, kind, body_hash, outcome, entry_id,
                                   amount, remaining)
    VALUES (p_terminal_id, p_request_id, 'reversal', p_body_hash, outcome, entry_id, amount,
            remaining);
END $$;

CREATE OR REPLACE FUNCTION balance_inquiry(
    p_terminal_id bigint, p_nonce text, p_national_id text,
    OUT outcome text, OUT reason text, OUT tranche_id bigint, OUT remaining bigint,
    OUT ends_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan  -- key probes only, as redeem_many()
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
#variable_conflict use_column
DECLARE
    term       record;
    hh_status  text;
    v_balance  bigint;
    v_opens_at timestamptz;
BEGIN
    IF NOT terminal_nonce_fresh(p_terminal_id, p_nonce) THEN
        outcome := 'nonce_reused'; RETURN;
    END IF;
    SELECT t.status AS terminal_status, m.status AS merchant_status INTO term
    FROM terminals t JOIN merchants m ON m.id = t.merchant_id WHERE t.id = p_terminal_id;
    IF term.terminal_status <> 'active' THEN
        outcome := 'terminal_suspended'; RETURN;
    ELSIF term.merchant_status <> 'active' THEN
        outcome := 'merchant_suspended'; RETURN;
    END IF;
    SELECT h.status INTO hh_status FROM households h WHERE h.national_id = p_national_id;
    IF NOT FOUND THEN
        outcome := 'household_not_found'; RETURN;
    END IF;
    SELECT t.id, t.ends_at INTO tranche_id, ends_at FROM tranches t
    WHERE tstzrange(t.starts_at, t.ends_at) @> now();
    SELECT e.balance, e.opens_at INTO v_balance, v_opens_at FROM entitlements e
    WHERE e.national_id = p_national_id AND e.tranche_id = balance_inquiry.tranche_id;
    reason := CASE
        WHEN hh_status <> 'active' THEN 'household_suspended'
        WHEN tranche_id IS NULL THEN 'no_active_tranche'
        WHEN v_balance IS NULL THEN 'not_eligible'
        WHEN now() < v_opens_at THEN 'not_open_yet'
    END;
    outcome := 'balance';
    remaining := coalesce(v_balance, 0);
END $$;

-- Only the service calls the functions that write the ledger.
REVOKE EXECUTE ON FUNCTION
    redeem_many(bigint[], text[], text[], bytea[], text[], bigint[], text[], boolean[], integer),
    reverse(bigint, text, text, bytea, text, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    redeem_many(bigint[], text[], text[], bytea[], text[], bigint[], text[], boolean[], integer),
    reverse(bigint, text, text, bytea, text, integer)
    TO coupon_writer;
