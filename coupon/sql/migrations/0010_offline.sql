-- Offline store-and-forward with a bounded allowance, and terminal end-of-day reconciliation:
-- the allowance on tranches, the switch on terminals, the capture time on the ledger (covered
-- by the digest of the rows that have one), the forwarded purchases and the reconciliations.

ALTER TABLE tranches
    ADD COLUMN offline_allowance bigint NOT NULL DEFAULT 0 CONSTRAINT tranches_offline_allowance_check
        CHECK (offline_allowance >= 0 AND offline_allowance <= 1000000000000),
    ADD COLUMN offline_max_amount bigint CONSTRAINT tranches_offline_max_amount_check
        CHECK (offline_max_amount > 0 AND offline_max_amount <= 1000000000000);
ALTER TABLE terminals ADD COLUMN offline_enabled boolean NOT NULL DEFAULT false;
GRANT SELECT (offline_enabled) ON terminals TO coupon_reader;
ALTER TABLE ledger ADD COLUMN captured_at timestamptz;

DROP FUNCTION ledger_digest(bigint, text, text, bigint, bigint, text, text, bigint, bigint, bigint,
                            timestamptz);
-- The digest of a ledger row: its fixed-width fields in binary (timestamps as UTC
-- microseconds, independent of any session setting), then the text fields joined by '|' (none
-- can hold one: request ids are [A-Za-z0-9_-], the rest are codes and digits), then for a
-- purchase forwarded from offline a zero byte and the time it was captured (text never holds a
-- zero byte; rows without captured_at keep the digest they always had).
CREATE OR REPLACE FUNCTION ledger_digest(
    seq bigint, kind text, request_id text, terminal_id bigint, merchant_id bigint,
    national_id text, province text, tranche_id bigint, amount bigint, reverses bigint,
    created_at timestamptz, captured_at timestamptz DEFAULT NULL) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
RETURN sha256(int8send(seq) || int8send(terminal_id) || int8send(merchant_id)
    || int8send(tranche_id) || int8send(amount) || int8send(coalesce(reverses, 0))
    || timestamptz_send(created_at)
    || convert_to(kind || '|' || request_id || '|' || national_id || '|' || province, 'UTF8')
    || coalesce('\x00'::bytea || timestamptz_send(captured_at), ''::bytea));

-- Purchases a terminal approved while it could not reach the processor, as it forwarded them
-- (POST /v1/offline/batches): (terminal, offline_seq) once each. The answer each got -- approved
-- with its ledger row, or declined with a reason, the store's loss -- is stored with the
-- terminal's other answers in terminal_requests, under the same request_id.
CREATE TABLE offline_purchases (
    terminal_id bigint NOT NULL,
    offline_seq bigint NOT NULL
        CONSTRAINT offline_purchases_offline_seq_check CHECK (offline_seq > 0),
    request_id  text NOT NULL,
    body_hash   bytea NOT NULL,
    national_id text COLLATE "C" NOT NULL,
    amount      bigint NOT NULL
        CONSTRAINT offline_purchases_amount_check CHECK (amount > 0 AND amount <= 1000000000000),
    captured_at timestamptz NOT NULL,
    -- the tranche whose window holds captured_at (null: none did)
    tranche_id  bigint,
    posted_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT offline_purchases_pkey PRIMARY KEY (terminal_id, offline_seq),
    CONSTRAINT offline_purchases_request_id_key UNIQUE (terminal_id, request_id)
);
-- a household's offline spending in a tranche (the allowance), and a day's postings
CREATE INDEX offline_purchases_household_idx ON offline_purchases (national_id, tranche_id);
CREATE INDEX offline_purchases_posted_at_idx ON offline_purchases (posted_at);

-- The last end-of-day reconciliation each terminal sent for each Asia/Tehran business day:
-- its totals, the processor's, and how they differ.
CREATE TABLE terminal_reconciliations (
    terminal_id    bigint NOT NULL,
    business_date  date NOT NULL,
    status         text NOT NULL CONSTRAINT terminal_reconciliations_status_check
        CHECK (status IN ('balanced', 'out_of_balance')),
    reported       jsonb NOT NULL,
    processor      jsonb NOT NULL,
    differences    jsonb NOT NULL,
    -- request ids only the processor has, only the terminal counted (how many)
    processor_only integer NOT NULL DEFAULT 0,
    terminal_only  integer NOT NULL DEFAULT 0,
    reconciled_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT terminal_reconciliations_pkey PRIMARY KEY (terminal_id, business_date)
);
CREATE INDEX terminal_reconciliations_day_idx ON terminal_reconciliations (business_date, status);

GRANT SELECT ON offline_purchases, terminal_reconciliations TO coupon_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON offline_purchases, terminal_reconciliations
    TO coupon_writer;

-- Purchases a terminal approved offline, forwarded in one batch: applied in offline_seq order,
-- each under the rules of an online redemption (as redeem_many) -- judged at the moment it was
-- captured, in the tranche whose window holds that moment -- plus the offline ones: the
-- terminal may work offline, the purchase was captured neither in the future (past the clock
-- skew) nor longer than p_max_delay ago, it is within the tranche's offline_max_amount, and the
-- household's approved offline purchases in the tranche stay within its offline_allowance. No
-- partial approvals: the goods are gone. An (terminal, offline_seq) seen before replays its
-- stored answer (a different body under it, or a request_id the terminal already used, is
-- refused as idempotency_conflict and stores nothing). Row per element, in offline_seq order.
-- Locks, in redeem_many()'s order: the ledger writers' lock, the request keys (the terminal's
-- offline key -- '' is no request id -- first), the entitlements (by national id, then tranche),
-- their households (by national id), the counter shards (by tranche, then the all-tranche rows).
CREATE OR REPLACE FUNCTION post_offline_batch(
    p_terminal_id bigint, p_nonce text, p_seqs bigint[], p_request_ids text[],
    p_body_hashes bytea[], p_national_ids text[], p_amounts bigint[], p_categories text[],
    p_captured_at timestamptz[], p_max_delay interval, p_skew interval, p_shards integer)
RETURNS TABLE (offline_seq bigint, request_id text, outcome text, reason text, entry_id bigint,
               amount bigint, remaining bigint, tranche_id bigint, posted_at timestamptz,
               replayed boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET plan_cache_mode = force_generic_plan  -- key probes only, as redeem_many()
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_shard   integer := pg_backend_pid() % p_shards;
    term      record;
    x         record;
    tr        record;
    ent       record;
    prior     offline_purchases%ROWTYPE;
    hh_status text;
    why       text;
    used      bigint;
    v_left    bigint;
    v_entry   bigint;
    v_at      timestamptz;
    ent_open  integer;
    hh_open   integer;
    served_in text;
    last_t    bigint;
    -- counter deltas of the approvals, one element each; summed per tranche at the end
    d_tranche  bigint[] := '{}';
    d_province text[] := '{}';
    d_amount   bigint[] := '{}';
    d_served   bigint[] := '{}';
    d_all      text[] := '{}';  -- the provinces of the households newly served at all
    c          record;
BEGIN
    PERFORM ledger_write_lock();
    IF NOT terminal_nonce_fresh(p_terminal_id, p_nonce) THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, 'nonce_reused'::text, NULL::text,
                            NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                            NULL::timestamptz, false;
        RETURN;
    END IF;
    PERFORM terminal_request_lock(p_terminal_id, k.r)
    FROM (SELECT DISTINCT u.r FROM unnest(p_request_ids || ''::text) AS u(r) ORDER BY u.r) k;
    FOR x IN
        SELECT DISTINCT u.nid, w.id AS tid
        FROM unnest(p_national_ids, p_captured_at) AS u(nid, at)
        JOIN LATERAL (SELECT t.id FROM tranches t
                      WHERE tstzrange(t.starts_at, t.ends_at) @> u.at LIMIT 1) w ON true
        ORDER BY 1, 2
    LOOP
        PERFORM FROM entitlements e WHERE e.national_id = x.nid AND e.tranche_id = x.tid
        FOR UPDATE;
    END LOOP;
    FOR x IN SELECT DISTINCT u.nid FROM unnest(p_national_ids) AS u(nid) ORDER BY 1 LOOP
        PERFORM FROM households h WHERE h.national_id = x.nid FOR UPDATE;
    END LOOP;
    SELECT t.status, t.offline_enabled, t.merchant_id, m.status AS merchant_status INTO term
    FROM terminals t JOIN merchants m ON m.id = t.merchant_id WHERE t.id = p_terminal_id;

    FOR x IN
        SELECT u.seq, u.rid, u.hash, u.nid, u.amount, u.cats, u.at
        FROM unnest(p_seqs, p_request_ids, p_body_hashes, p_national_ids, p_amounts,
                    p_categories, p_captured_at) WITH ORDINALITY
             AS u(seq, rid, hash, nid, amount, cats, at, i)
        ORDER BY u.seq, u.i
    LOOP
        SELECT * INTO prior FROM offline_purchases o
        WHERE o.terminal_id = p_terminal_id AND o.offline_seq = x.seq;
        IF FOUND AND prior.request_id = x.rid AND prior.body_hash = x.hash THEN
            RETURN QUERY
            SELECT x.seq, x.rid, r.outcome, r.reason, r.entry_id, r.amount, r.remaining,
                   r.tranche_id, r.created_at, true
            FROM terminal_requests r
            WHERE r.terminal_id = p_terminal_id AND r.request_id = x.rid;
            CONTINUE;
        END IF;
        IF FOUND OR EXISTS (SELECT FROM terminal_requests r
                            WHERE r.terminal_id = p_terminal_id AND r.request_id = x.rid) THEN
            RETURN QUERY SELECT x.seq, x.rid, 'idempotency_conflict'::text, NULL::text,
                                NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::timestamptz, false;
            CONTINUE;
        END IF;

        SELECT t.id, t.categories, t.offline_allowance, t.offline_max_amount INTO tr
        FROM tranches t WHERE tstzrange(t.starts_at, t.ends_at) @> x.at;
        SELECT h.status INTO hh_status FROM households h WHERE h.national_id = x.nid;
        SELECT e.balance, e.opens_at, e.province INTO ent FROM entitlements e
        WHERE e.national_id = x.nid AND e.tranche_id = tr.id;
        used := (SELECT coalesce(sum(r.amount), 0) FROM offline_purchases o
                 JOIN terminal_requests r
                   ON r.terminal_id = o.terminal_id AND r.request_id = o.request_id
                 WHERE o.national_id = x.nid AND o.tranche_id = tr.id
                   AND r.outcome = 'approved');
        why := CASE
            WHEN term.status <> 'active' THEN 'terminal_suspended'
            WHEN term.merchant_status <> 'active' THEN 'merchant_suspended'
            WHEN NOT term.offline_enabled THEN 'offline_not_enabled'
            WHEN EXISTS (SELECT FROM pending_reversals pv WHERE pv.terminal_id = p_terminal_id
                         AND pv.original_request_id = x.rid) THEN 'reversed'
            WHEN x.at > now() + p_skew THEN 'captured_in_future'
            WHEN x.at < now() - p_max_delay THEN 'late'
            WHEN tr.id IS NULL THEN 'outside_window'
            WHEN hh_status IS NULL THEN 'household_not_found'
            WHEN hh_status <> 'active' THEN 'household_suspended'
            WHEN ent.balance IS NULL THEN 'not_eligible'
            WHEN x.at < ent.opens_at THEN 'not_open_yet'
            WHEN NOT (string_to_array(x.cats, ',') <@ tr.categories) THEN 'category_not_allowed'
            WHEN x.amount > tr.offline_max_amount THEN 'offline_max_amount_exceeded'
            WHEN used + x.amount > tr.offline_allowance THEN 'offline_allowance_exceeded'
            WHEN ent.balance < x.amount THEN 'insufficient_balance'
        END;
        v_entry := NULL; v_left := NULL;
        IF why IS NULL THEN
            UPDATE entitlements e
            SET balance = e.balance - x.amount, open_redemptions = e.open_redemptions + 1
            WHERE e.national_id = x.nid AND e.tranche_id = tr.id
            RETURNING e.balance, e.open_redemptions INTO v_left, ent_open;
            UPDATE households h
            SET open_redemptions = h.open_redemptions + 1,
                served_province = CASE WHEN h.open_redemptions = 0 THEN ent.province
                                       ELSE h.served_province END
            WHERE h.national_id = x.nid
            RETURNING h.open_redemptions, h.served_province INTO hh_open, served_in;
            INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id,
                                province, tranche_id, amount, captured_at)
            VALUES ('redemption', x.rid, p_terminal_id, term.merchant_id, x.nid, ent.province,
                    tr.id, x.amount, x.at)
            RETURNING seq INTO v_entry;
            d_tranche := d_tranche || tr.id; d_province := d_province || ent.province;
            d_amount := d_amount || x.amount; d_served := d_served || (ent_open = 1)::int::bigint;
            IF hh_open = 1 THEN
                d_all := d_all || served_in;
            END IF;
        END IF;
        INSERT INTO terminal_requests (terminal_id, request_id, kind, body_hash, outcome, reason,
                                       entry_id, amount, remaining, tranche_id, province,
                                       merchant_id)
        VALUES (p_terminal_id, x.rid, 'redemption', x.hash,
                CASE WHEN why IS NULL THEN 'approved' ELSE 'declined' END, why, v_entry,
                CASE WHEN why IS NULL THEN x.amount END, v_left,
                CASE WHEN why IS NULL THEN tr.id END, CASE WHEN why IS NULL THEN ent.province END,
                CASE WHEN why IS NULL THEN term.merchant_id END)
        RETURNING created_at INTO v_at;
        INSERT INTO offline_purchases (terminal_id, offline_seq, request_id, body_hash,
                                       national_id, amount, captured_at, tranche_id)
        VALUES (p_terminal_id, x.seq, x.rid, x.hash, x.nid, x.amount, x.at, tr.id);
        RETURN QUERY SELECT x.seq, x.rid,
                            CASE WHEN why IS NULL THEN 'approved' ELSE 'declined' END, why,
                            v_entry, CASE WHEN why IS NULL THEN x.amount END, v_left,
                            CASE WHEN why IS NULL THEN tr.id END, v_at, false;
    END LOOP;

    -- the counters, once per tranche in tranche order; the all-tranche rows with the last
    last_t := (SELECT max(t) FROM unnest(d_tranche) AS t);
    FOR c IN
        SELECT d.t, array_agg(d.p ORDER BY d.p) AS provinces,
               array_agg(d.tx ORDER BY d.p) AS txs, array_agg(d.amount ORDER BY d.p) AS amounts,
               array_agg(d.served ORDER BY d.p) AS served
        FROM (SELECT u.t, u.p, count(*)::bigint AS tx, sum(u.amount)::bigint AS amount,
                     sum(u.served)::bigint AS served
              FROM unnest(d_tranche, d_province, d_amount, d_served) AS u(t, p, amount, served)
              GROUP BY u.t, u.p) d
        GROUP BY d.t ORDER BY d.t
    LOOP
        PERFORM counters_apply(
            v_shard, c.t, c.provinces, c.txs, c.amounts, c.served,
            CASE WHEN c.t = last_t THEN (SELECT coalesce(array_agg(a.p ORDER BY a.p), '{}')
                                         FROM (SELECT DISTINCT p FROM unnest(d_all) AS p) a)
                 ELSE '{}' END,
            CASE WHEN c.t = last_t THEN (SELECT coalesce(array_agg(a.n ORDER BY a.p), '{}')
                                         FROM (SELECT p, count(*)::bigint AS n
                                               FROM unnest(d_all) AS p GROUP BY p) a)
                 ELSE '{}' END);
    END LOOP;
END $$;

REVOKE EXECUTE ON FUNCTION
    post_offline_batch(bigint, text, bigint[], text[], bytea[], text[], bigint[], text[],
                       timestamptz[], interval, interval, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    post_offline_batch(bigint, text, bigint[], text[], bytea[], text[], bigint[], text[],
                       timestamptz[], interval, interval, integer)
    TO coupon_writer;
