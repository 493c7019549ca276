-- The first group commit, kept verbatim to measure against (not part of the schema):
-- redeem_many() calling a per-row function, statement by statement.
--     python -m loadtest.pgcost --setup loadtest/redeem_many_rows.sql \
--         --variants redeem_many,redeem_many_rows
-- Its counter helpers as they were then (one row per call).
CREATE OR REPLACE FUNCTION counters_add_old(
    p_shard integer, p_tranche_id bigint, p_province text, p_transactions bigint,
    p_amount bigint, p_served bigint)
RETURNS void LANGUAGE sql AS $$
    UPDATE province_counters
    SET transactions = transactions + p_transactions, amount = amount + p_amount,
        served = served + p_served
    WHERE tranche_id = p_tranche_id AND province = p_province AND shard = p_shard;
$$;

CREATE OR REPLACE FUNCTION counters_all_add_old(p_shard integer, p_province text, p_served bigint)
RETURNS void LANGUAGE sql AS $$
    UPDATE province_counters_all SET served = served + p_served
    WHERE province = p_province AND shard = p_shard;
$$;

CREATE OR REPLACE FUNCTION redeem_row_old(
    p_terminal_id bigint, p_nonce text, p_request_id text, p_body_hash bytea,
    p_national_id text, p_amount bigint, p_categories text[], p_allow_partial boolean,
    OUT http_status integer, OUT error text, OUT body jsonb, OUT replayed boolean,
    OUT c_tranche_id bigint, OUT c_province text, OUT c_amount bigint, OUT c_served integer,
    OUT c_all_province text)
LANGUAGE plpgsql AS $$
DECLARE
    prior      terminal_requests%ROWTYPE;
    term       record;
    hh         record;
    tr         record;
    ent        record;
    reason     text;
    approved   bigint;
    remaining  bigint;
    ent_open   integer;
    hh_open    integer;
    served_in  text;
    entry      record;
BEGIN
    replayed := false;
    PERFORM ledger_write_lock();
    IF NOT terminal_nonce_fresh(p_terminal_id, p_nonce) THEN
        http_status := 401; error := 'nonce_reused'; RETURN;
    END IF;
    PERFORM terminal_request_lock(p_terminal_id, p_request_id);
    SELECT * INTO prior FROM terminal_requests
    WHERE terminal_id = p_terminal_id AND request_id = p_request_id;
    IF FOUND THEN
        IF prior.kind <> 'redemption' OR prior.body_hash <> p_body_hash THEN
            http_status := 409; error := 'idempotency_conflict'; RETURN;
        END IF;
        http_status := prior.http_status; body := prior.response; replayed := true; RETURN;
    END IF;

    SELECT t.status AS terminal_status, t.merchant_id, m.status AS merchant_status INTO term
    FROM terminals t JOIN merchants m ON m.id = t.merchant_id WHERE t.id = p_terminal_id;
    IF term.terminal_status <> 'active' THEN
        reason := 'terminal_suspended';
    ELSIF term.merchant_status <> 'active' THEN
        reason := 'merchant_suspended';
    ELSIF EXISTS (SELECT FROM pending_reversals
                  WHERE terminal_id = p_terminal_id AND original_request_id = p_request_id) THEN
        reason := 'reversed';
    END IF;
    IF reason IS NULL THEN
        SELECT status INTO hh FROM households WHERE national_id = p_national_id;
        IF NOT FOUND THEN
            reason := 'household_not_found';
        ELSIF hh.status <> 'active' THEN
            reason := 'household_suspended';
        END IF;
    END IF;
    IF reason IS NULL THEN
        SELECT id, categories INTO tr FROM tranches
        WHERE tstzrange(starts_at, ends_at) @> now();
        IF NOT FOUND THEN
            reason := 'no_active_tranche';
        END IF;
    END IF;
    IF reason IS NULL THEN
        SELECT balance, opens_at, province INTO ent FROM entitlements
        WHERE national_id = p_national_id AND tranche_id = tr.id
        FOR UPDATE;
        IF NOT FOUND THEN
            reason := 'not_eligible';
        ELSIF now() < ent.opens_at THEN
            reason := 'not_open_yet';
        ELSIF NOT (p_categories <@ tr.categories) THEN
            reason := 'category_not_allowed';
        ELSIF ent.balance >= p_amount THEN
            approved := p_amount;
        ELSIF p_allow_partial AND ent.balance > 0 THEN
            approved := ent.balance;
        ELSE
            reason := 'insufficient_balance';
        END IF;
    END IF;

    IF reason IS NOT NULL THEN
        http_status := 402;
        body := jsonb_build_object('status', 'declined', 'reason', reason,
                                   'request_id', p_request_id);
    ELSE
        UPDATE entitlements
        SET balance = balance - approved, open_redemptions = open_redemptions + 1
        WHERE national_id = p_national_id AND tranche_id = tr.id
        RETURNING balance, open_redemptions INTO remaining, ent_open;
        UPDATE households
        SET open_redemptions = open_redemptions + 1,
            served_province = CASE WHEN open_redemptions = 0 THEN ent.province
                                   ELSE served_province END
        WHERE national_id = p_national_id
        RETURNING open_redemptions, served_province INTO hh_open, served_in;
        INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, province,
                            tranche_id, amount)
        VALUES ('redemption', p_request_id, p_terminal_id, term.merchant_id, p_national_id,
                ent.province, tr.id, approved)
        RETURNING seq, created_at INTO entry;
        c_tranche_id := tr.id; c_province := ent.province; c_amount := approved;
        c_served := (ent_open = 1)::int;
        IF hh_open = 1 THEN
            c_all_province := served_in;
        END IF;
        http_status := 201;
        body := jsonb_build_object(
            'redemption_id', entry.seq, 'request_id', p_request_id, 'status', 'approved',
            'national_id', p_national_id, 'amount', approved, 'remaining', remaining,
            'tranche_id', tr.id, 'province', ent.province, 'merchant_id', term.merchant_id,
            'terminal_id', p_terminal_id, 'created_at', entry.created_at);
        IF p_allow_partial THEN
            body := body || jsonb_build_object('requested_amount', p_amount);
        END IF;
    END IF;
    INSERT INTO terminal_requests (terminal_id, request_id, kind, body_hash, http_status, response)
    VALUES (p_terminal_id, p_request_id, 'redemption', p_body_hash, http_status, body);
END $$;


CREATE OR REPLACE FUNCTION redeem_many_rows(
    p_terminal_ids bigint[], p_nonces text[], p_request_ids text[], p_body_hashes bytea[],
    p_national_ids text[], p_amounts bigint[], p_categories text[], p_allow_partial boolean[],
    p_shards integer)
RETURNS TABLE (n integer, http_status integer, error text, body jsonb, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    r          record;
    d          record;
    v_shard    integer := pg_backend_pid() % p_shards;
    d_tranche  bigint[] := '{}';
    d_province text[] := '{}';
    d_amount   bigint[] := '{}';
    d_served   integer[] := '{}';
    d_all      text[] := '{}';
BEGIN
    FOR i IN 1 .. cardinality(p_terminal_ids) LOOP
        r := redeem_row_old(p_terminal_ids[i], p_nonces[i], p_request_ids[i], p_body_hashes[i],
                        p_national_ids[i], p_amounts[i],
                        string_to_array(p_categories[i], ','), p_allow_partial[i]);
        IF r.c_tranche_id IS NOT NULL THEN
            d_tranche := d_tranche || r.c_tranche_id;
            d_province := d_province || r.c_province;
            d_amount := d_amount || r.c_amount;
            d_served := d_served || r.c_served;
            IF r.c_all_province IS NOT NULL THEN
                d_all := d_all || r.c_all_province;
            END IF;
        END IF;
        n := i; http_status := r.http_status; error := r.error; body := r.body;
        replayed := r.replayed;
        RETURN NEXT;
    END LOOP;
    FOR d IN SELECT u.t, u.p, count(*) AS tx, sum(u.a)::bigint AS amount,
                    sum(u.s) AS served
             FROM unnest(d_tranche, d_province, d_amount, d_served) AS u(t, p, a, s)
             GROUP BY u.t, u.p ORDER BY u.t, u.p LOOP
        PERFORM counters_add_old(v_shard, d.t, d.p, d.tx, d.amount, d.served);
    END LOOP;
    FOR d IN SELECT u.p, count(*) AS served FROM unnest(d_all) AS u(p)
             GROUP BY u.p ORDER BY u.p LOOP
        PERFORM counters_all_add_old(v_shard, d.p, d.served);
    END LOOP;
END $$;

