-- A suspended terminal, or a terminal of a suspended store, may not reverse either.

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
    term       record;
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
    -- a suspended terminal or store sends no new financial message, reversals included
    SELECT t.status AS terminal_status, m.status AS merchant_status INTO term
    FROM terminals t JOIN merchants m ON m.id = t.merchant_id WHERE t.id = p_terminal_id;
    IF term.terminal_status <> 'active' THEN
        outcome := 'terminal_suspended'; RETURN;
    ELSIF term.merchant_status <> 'active' THEN
        outcome := 'merchant_suspended'; RETURN;
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
