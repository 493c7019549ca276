-- Coupon: the whole schema at its newest version. `coupon db init` applies this file to an empty
-- database; an existing one reaches the same catalog through coupon/sql/migrations/ (a test
-- compares the two). A change here comes with a new migration.
-- Money is integer rials (bigint), time is timestamptz, invariants are CHECKs named
-- <table>_<what>_<kind>. The hot path (redeem, reverse, balance) lives in SQL functions at the
-- end of this file so that a terminal request costs one database round trip.

-- Advisory lock keys (7365626, n), one meaning each -- keep this list whole:
--   1 household import (one at a time)      2 ledger writers (shared) / seal horizon (exclusive)
--   3 the ledger sealer (one at a time)     4 the live-counters publisher (session lock)
-- (terminal, request_id) locks use other first keys: see terminal_request_lock().

CREATE TABLE schema_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- 31 provinces by ISO 3166-2:IR code; rows are loaded by `coupon db init` from pycountry and
-- the iso3166-2 package (names are never typed by hand).
CREATE TABLE provinces (
    code    text PRIMARY KEY CONSTRAINT provinces_code_check CHECK (code ~ '^IR-[0-9]{2}$'),
    name_en text NOT NULL,
    name_fa text NOT NULL
);

-- The SPEC's national-id rule, the database's one copy of coupon/national_id.py (a test keeps
-- them in agreement): national_id_checksum_ok(national_id_number(x)) is true exactly when x is
-- valid (false or null otherwise). In two steps so that a bulk caller parses each id once and
-- checks it with plain bigint arithmetic; compute national_id_number() in a subquery and pass
-- the column, as inlining copies the argument into each of its references.

-- The id as a number: 0..9999999999 when it is exactly 10 ASCII digits, else null. The cast
-- applies to the CASE, not inside it: a constant argument is then never cast at plan time (a
-- constant THEN branch is folded even when its WHEN is false at run time). PostgreSQL 16+
-- checks the digits with pg_input_is_valid() ('1' || nid parses to >= 10^10 only when all 11
-- characters are digits), three times cheaper per row than the ltrim() that PostgreSQL 15
-- falls back to (BENCHMARKS.md).
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

-- The checksum on that number: 10 digits, not all alike (n a multiple of 1111111111), and the
-- last digit is the check digit of the first nine: s = sum(d[i] * (10 - i), i = 0..8) % 11, and
-- the array maps s to s when s < 2, else to 11 - s.
CREATE OR REPLACE FUNCTION national_id_checksum_ok(n bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN n BETWEEN 0 AND 9999999999 AND n % 1111111111 <> 0
   AND n % 10 = ('{0,1,9,8,7,6,5,4,3,2,1}'::int8[])[1 + (
         n / 1000000000 * 10 + n / 100000000 % 10 * 9 + n / 10000000 % 10 * 8
       + n / 1000000 % 10 * 7 + n / 100000 % 10 * 6 + n / 10000 % 10 * 5
       + n / 1000 % 10 * 4 + n / 100 % 10 * 3 + n / 10 % 10 * 2) % 11];

CREATE TABLE households (
    national_id text COLLATE "C" PRIMARY KEY
        -- full checksum validation happens on the way in (API, import); a regex CHECK here
        -- would slow the bulk import by a large part (BENCHMARKS.md)
        CONSTRAINT households_national_id_check CHECK (octet_length(national_id) = 10),
    -- no foreign key: the import checks provinces set-based, a per-row trigger would halve it
    province    text NOT NULL CONSTRAINT households_province_check CHECK (octet_length(province) = 5),
    members     smallint NOT NULL CONSTRAINT households_members_check CHECK (members BETWEEN 1 AND 30),
    decile      smallint NOT NULL CONSTRAINT households_decile_check CHECK (decile BETWEEN 1 AND 10),
    status      text NOT NULL DEFAULT 'active'
        CONSTRAINT households_status_check CHECK (status IN ('active', 'suspended')),
    -- unreversed redemptions over all tranches: 0 -> 1 makes the household "served" in the
    -- all-tranche counters, 1 -> 0 takes it back; kept under the household's row lock.
    open_redemptions integer NOT NULL DEFAULT 0
        CONSTRAINT households_open_redemptions_check CHECK (open_redemptions >= 0),
    -- the province whose all-tranche "served" counter holds this household, while it does
    served_province text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tranches (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CONSTRAINT tranches_name_check CHECK (length(name) BETWEEN 1 AND 200),
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    categories  text[] NOT NULL CONSTRAINT tranches_categories_check CHECK (
        cardinality(categories) >= 1 AND categories <@ ARRAY[
            'rice', 'cooking_oil', 'chicken', 'red_meat', 'eggs',
            'dairy', 'legumes', 'sugar', 'pasta', 'tea']::text[]),
    carry_over  boolean NOT NULL,
    -- tranche this one carried unspent balances from (null when carry_over is false)
    carried_from bigint CONSTRAINT tranches_carried_from_fkey REFERENCES tranches (id),
    households_credited bigint NOT NULL DEFAULT 0,
    total_credit bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- offline store-and-forward: rials a household may spend offline over the whole tranche
    -- (0: no offline purchases), and the most one offline purchase may be (null: no limit but
    -- the allowance)
    offline_allowance bigint NOT NULL DEFAULT 0 CONSTRAINT tranches_offline_allowance_check
        CHECK (offline_allowance >= 0 AND offline_allowance <= 1000000000000),
    offline_max_amount bigint CONSTRAINT tranches_offline_max_amount_check
        CHECK (offline_max_amount > 0 AND offline_max_amount <= 1000000000000),
    CONSTRAINT tranches_window_check CHECK (starts_at < ends_at),
    -- two redemption windows never overlap, whoever inserts them
    CONSTRAINT tranches_window_excl EXCLUDE USING gist (tstzrange(starts_at, ends_at) WITH &&)
);

CREATE TABLE tranche_bands (
    tranche_id        bigint NOT NULL
        CONSTRAINT tranche_bands_tranche_id_fkey REFERENCES tranches (id),
    up_to_decile      smallint NOT NULL
        CONSTRAINT tranche_bands_up_to_decile_check CHECK (up_to_decile BETWEEN 1 AND 10),
    per_member_credit bigint NOT NULL
        CONSTRAINT tranche_bands_per_member_credit_check
        CHECK (per_member_credit > 0 AND per_member_credit <= 1000000000000),
    opens_at          timestamptz NOT NULL,
    CONSTRAINT tranche_bands_pkey PRIMARY KEY (tranche_id, up_to_decile)
);

-- The credit of one household in one tranche. `balance` is what is left to spend.
CREATE TABLE entitlements (
    national_id text COLLATE "C" NOT NULL,
    tranche_id  bigint NOT NULL,
    province    text NOT NULL,
    credit      bigint NOT NULL CONSTRAINT entitlements_credit_check CHECK (credit > 0),
    carried_in  bigint NOT NULL DEFAULT 0
        CONSTRAINT entitlements_carried_in_check CHECK (carried_in >= 0),
    carried_out bigint NOT NULL DEFAULT 0
        CONSTRAINT entitlements_carried_out_check CHECK (carried_out >= 0),
    balance     bigint NOT NULL CONSTRAINT entitlements_balance_check CHECK (balance >= 0),
    opens_at    timestamptz NOT NULL,
    open_redemptions integer NOT NULL DEFAULT 0
        CONSTRAINT entitlements_open_redemptions_check CHECK (open_redemptions >= 0),
    -- true when no earlier tranche had credited this household (all-tranche eligible count)
    first_credit boolean NOT NULL DEFAULT false,
    CONSTRAINT entitlements_pkey PRIMARY KEY (national_id, tranche_id),
    CONSTRAINT entitlements_conservation_check
        CHECK (balance <= credit + carried_in AND carried_out <= credit + carried_in)
) WITH (fillfactor = 80);

CREATE TABLE merchants (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL CONSTRAINT merchants_name_check CHECK (length(name) BETWEEN 1 AND 200),
    province   text NOT NULL CONSTRAINT merchants_province_fkey REFERENCES provinces (code),
    status     text NOT NULL DEFAULT 'active'
        CONSTRAINT merchants_status_check CHECK (status IN ('active', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- what kind of store: inspection compares a store with those of its province and category
    category   text NOT NULL DEFAULT 'grocery'
        CONSTRAINT merchants_category_check CHECK (category IN (
            'grocery', 'supermarket', 'chain_store', 'butcher', 'dairy_shop', 'bakery'))
);
CREATE INDEX merchants_province_idx ON merchants (province, category);

CREATE TABLE terminals (
    id          bigint GENERATED ALWAYS AS IDENTITY (START WITH 1001) PRIMARY KEY,
    merchant_id bigint NOT NULL CONSTRAINT terminals_merchant_id_fkey REFERENCES merchants (id),
    -- a secret as versions before 0.3 stored it, in plain text: the service encrypts it into
    -- secret_box and clears it when it starts
    secret      text CONSTRAINT terminals_secret_check CHECK (length(secret) >= 32),
    status      text NOT NULL DEFAULT 'active'
        CONSTRAINT terminals_status_check CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- the HMAC key, encrypted under a key kept outside the database (coupon/keyring.py); never
    -- returned after creation or rotation
    secret_box     bytea,
    -- after a rotation, the previous secret still verifies until previous_until
    previous_box   bytea,
    previous_until timestamptz,
    -- the terminal may approve purchases offline and forward them later (operators decide)
    offline_enabled boolean NOT NULL DEFAULT false
);
CREATE INDEX terminals_merchant_id_idx ON terminals (merchant_id);

CREATE TABLE api_tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash bytea NOT NULL CONSTRAINT api_tokens_token_hash_key UNIQUE,
    role       text NOT NULL CONSTRAINT api_tokens_role_check CHECK (role IN ('operator', 'auditor')),
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    -- a token works until it expires or is revoked, whichever comes first
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    -- a token with a province acts only on that province's stores, terminals and households;
    -- none (null) is national
    province   text CONSTRAINT api_tokens_province_fkey REFERENCES provinces (code)
);

-- The thresholds and weights of the inspection signals (coupon/inspection.py), one row per
-- version; the newest applies. Never updated: a change is a new version.
CREATE TABLE inspection_rules (
    version    integer PRIMARY KEY CONSTRAINT inspection_rules_version_check CHECK (version > 0),
    rules      jsonb NOT NULL,
    note       text NOT NULL DEFAULT '',
    created_by text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The inspection ranking of a closed province-day (every ledger row of it committed), computed
-- once by the first request that needs it under the same rules (`params`, as JSON) and read by
-- the next ones; `ranking` is the JSON array of the stores that scored.
CREATE TABLE inspection_days (
    day         date NOT NULL,
    province    text NOT NULL,  -- the stores' ('*': every province)
    params      text NOT NULL,
    ranking     text NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inspection_days_pkey PRIMARY KEY (day, province, params)
);

-- Drawn from whenever a terminal's secret is made or changes: every process polls it and
-- forgets the secrets it cached when it moved.
CREATE SEQUENCE terminal_key_changes_seq;

-- Nonces seen per terminal; kept a little longer than the 300 s clock window, then pruned.
CREATE TABLE terminal_nonces (
    terminal_id bigint NOT NULL,
    nonce       text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT terminal_nonces_pkey PRIMARY KEY (terminal_id, nonce)
);
CREATE INDEX terminal_nonces_seen_at_idx ON terminal_nonces (seen_at);

-- One row per (terminal, request_id): the idempotency record and its stored answer.
-- kind 'pending_reversal' is a tombstone: a reversal that arrived before its original.
CREATE TABLE terminal_requests (
    terminal_id bigint NOT NULL,
    request_id  text NOT NULL,
    kind        text NOT NULL
        CONSTRAINT terminal_requests_kind_check CHECK (kind IN ('redemption', 'reversal')),
    body_hash   bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- the answer, typed (coupon/answers.py makes the HTTP response of it, first and on replay)
    outcome     text NOT NULL CONSTRAINT terminal_requests_outcome_check
        CHECK (outcome IN ('approved', 'declined', 'reversed', 'pending_original')),
    reason      text,
    entry_id    bigint,  -- the ledger row: the redemption's, or the reversal's
    amount      bigint,
    remaining   bigint,
    tranche_id  bigint,
    province    text,
    merchant_id bigint,
    CONSTRAINT terminal_requests_pkey PRIMARY KEY (terminal_id, request_id)
);

-- A reversal that names a request the terminal has not sent yet (ISO 8583 style tombstone).
CREATE TABLE pending_reversals (
    terminal_id         bigint NOT NULL,
    original_request_id text NOT NULL,
    request_id          text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pending_reversals_pkey PRIMARY KEY (terminal_id, original_request_id)
);

-- The ledger: append-only, one row per approved redemption and per reversal.
-- A redemption's id (and a reversal's) is the seq of its ledger row; a reversal row names the
-- redemption it voids in `reverses`, at most once.
CREATE TABLE ledger (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CONSTRAINT ledger_kind_check CHECK (kind IN ('redemption', 'reversal')),
    request_id  text NOT NULL,
    terminal_id bigint NOT NULL,
    merchant_id bigint NOT NULL,
    national_id text COLLATE "C" NOT NULL,
    province    text NOT NULL,
    tranche_id  bigint NOT NULL,
    amount      bigint NOT NULL
        CONSTRAINT ledger_amount_check CHECK (amount > 0 AND amount <= 1000000000000),
    reverses    bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- a purchase approved offline: when the terminal captured it (created_at: when it posted)
    captured_at timestamptz,
    CONSTRAINT ledger_reverses_check CHECK ((kind = 'reversal') = (reverses IS NOT NULL))
);
CREATE UNIQUE INDEX ledger_reverses_key ON ledger (reverses) WHERE reverses IS NOT NULL;
CREATE INDEX ledger_national_id_idx ON ledger (national_id, seq);
CREATE INDEX ledger_merchant_id_idx ON ledger (merchant_id, seq);
CREATE INDEX ledger_created_at_idx ON ledger (created_at) INCLUDE (seq);
-- a province's entries in a time window: seq included so the page is found in the index alone
CREATE INDEX ledger_province_time_idx ON ledger (province, created_at) INCLUDE (seq);

-- Live counters, sharded so that 31 hot province rows do not serialise redemptions: a
-- transaction adds to one shard; readers sum the shards in one snapshot, so what they see is
-- always exactly what the ledger says.
CREATE TABLE province_counters (
    tranche_id   bigint NOT NULL,
    province     text NOT NULL,
    shard        smallint NOT NULL,
    transactions bigint NOT NULL DEFAULT 0,
    served       bigint NOT NULL DEFAULT 0,
    amount       bigint NOT NULL DEFAULT 0,
    eligible     bigint NOT NULL DEFAULT 0,
    CONSTRAINT province_counters_pkey PRIMARY KEY (tranche_id, province, shard)
) WITH (fillfactor = 50);

-- Distinct-household figures over all tranches (a household counts once however many
-- tranches served or credited it).
CREATE TABLE province_counters_all (
    province text NOT NULL,
    shard    smallint NOT NULL,
    served   bigint NOT NULL DEFAULT 0,
    eligible bigint NOT NULL DEFAULT 0,
    CONSTRAINT province_counters_all_pkey PRIMARY KEY (province, shard)
) WITH (fillfactor = 50);

-- Ids of the live-counter stream's events (coupon/live.py): the stats publisher draws one for
-- every change it announces, so that every server process labels the same change with the same
-- ever-increasing id. Nothing on the redemption path touches it.
CREATE SEQUENCE stats_version_seq;

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

-- Finding a reversal's original when it was made at another terminal (403, not a tombstone).
CREATE INDEX ledger_redemption_request_idx ON ledger (request_id)
    WHERE kind = 'redemption';

-- ============================================================================================
-- Tamper evidence. Every ledger row gets a digest in ledger_seals, and the digests are chained
-- block by block in ledger_blocks: block.hash = sha256(prev_block.hash || digests in seq order).
-- Changing, deleting, inserting or reordering a row behind the service's back breaks a digest,
-- a seal or a block; rewriting the whole chain changes the head an auditor copied out.
-- ============================================================================================

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

CREATE TABLE ledger_seals (
    seq      bigint PRIMARY KEY,
    block_no bigint NOT NULL,
    digest   bytea NOT NULL CONSTRAINT ledger_seals_digest_check CHECK (octet_length(digest) = 32)
);

CREATE TABLE ledger_blocks (
    block_no   bigint PRIMARY KEY,
    first_seq  bigint NOT NULL,
    last_seq   bigint NOT NULL,
    entries    integer NOT NULL CONSTRAINT ledger_blocks_entries_check CHECK (entries > 0),
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL CONSTRAINT ledger_blocks_hash_check CHECK (octet_length(hash) = 32),
    sealed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_blocks_range_check CHECK (first_seq <= last_seq)
);

-- Each block's head signed with the sealer's Ed25519 key, which lives outside the database
-- (coupon/signing.py): whoever can write the database, a superuser too, cannot sign a
-- rewritten chain. signer is the raw public key; verification trusts only keys it is given.
CREATE TABLE ledger_block_signatures (
    block_no  bigint PRIMARY KEY,
    signer    bytea NOT NULL
        CONSTRAINT ledger_block_signatures_signer_check CHECK (octet_length(signer) = 32),
    signature bytea NOT NULL
        CONSTRAINT ledger_block_signatures_signature_check CHECK (octet_length(signature) = 64),
    signed_at timestamptz NOT NULL DEFAULT now()
);

-- Autovacuum of the tables every redemption writes: inserts vacuumed and tables analysed every
-- million rows, not every 10-20 % of their size, so that each run stays a short job at any size
-- (the terminal path's plans do not follow the statistics: key probes only, below). Dead rows
-- from updates keep the tables' own thresholds. Measured in BENCHMARKS.md.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['ledger', 'ledger_seals', 'terminal_requests', 'terminal_nonces',
                             'households', 'entitlements'] LOOP
        EXECUTE format('ALTER TABLE %I SET (autovacuum_vacuum_insert_threshold = 1000000, '
                       'autovacuum_vacuum_insert_scale_factor = 0, '
                       'autovacuum_analyze_threshold = 1000000, '
                       'autovacuum_analyze_scale_factor = 0)', t);
    END LOOP;
END $$;

-- Writers of ledger rows hold this lock (shared: writers never wait for each other) from
-- before their row gets its seq until commit. The sealer takes it exclusively for an instant:
-- once it has it, every seq up to max(seq) is committed or gone, so sealing in seq order is
-- sealing in commit order.
CREATE OR REPLACE FUNCTION ledger_write_lock() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock_shared(7365626, 2);
$$;

-- Append-only, whoever connects: no UPDATE, DELETE or TRUNCATE of the ledger or its seals.
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the table % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['ledger', 'ledger_seals', 'ledger_blocks',
                             'ledger_block_signatures'] LOOP
        IF NOT EXISTS (SELECT FROM pg_trigger
                       WHERE tgname = t || '_append_only' AND tgrelid = t::regclass) THEN
            EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I '
                           'FOR EACH ROW EXECUTE FUNCTION ledger_append_only()',
                           t || '_append_only', t);
            EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()',
                           t || '_no_truncate', t);
        END IF;
    END LOOP;
END $$;

-- Least privilege. The login roles coupon_writer (the service) and coupon_reader (auditor
-- requests, in read-only transactions) exist before this file runs (`coupon db roles`); the
-- owner that runs it is the only one with DDL. Ledger rows enter only through the terminal
-- functions, which run as the owner (SECURITY DEFINER, below); seals and blocks are appended.
-- The household import stages its lines in UNLOGGED tables (shared buffers, unlike TEMP ones)
-- in a schema of their own, the one place the writer may create tables.
CREATE SCHEMA coupon_staging;
GRANT USAGE, CREATE ON SCHEMA coupon_staging TO coupon_writer;
GRANT USAGE ON SCHEMA public TO coupon_writer, coupon_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO coupon_reader;
-- auditors see which terminals exist, never their secrets (encrypted or not)
REVOKE SELECT ON terminals FROM coupon_reader;
GRANT SELECT (id, merchant_id, status, created_at, offline_enabled) ON terminals
    TO coupon_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO coupon_writer;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ledger FROM coupon_writer;
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_seals, ledger_blocks, ledger_block_signatures,
    schema_meta, provinces, inspection_rules FROM coupon_writer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO coupon_writer;

-- ============================================================================================
-- The terminal hot path. One call = one round trip = one transaction. Each function records the
-- request's nonce, serialises on the (terminal, request_id) key with a transaction-scoped
-- advisory lock (so concurrent duplicates wait and then replay), and stores its answer for
-- idempotent replays. Locks are always taken in the same order -- the ledger writers' lock
-- (shared), the request's key, entitlement, household, counter shards -- so redemptions and
-- reversals never deadlock; a batch (redeem_many) takes its households in national-id order.
-- Each returns its answer as typed columns: `outcome` is approved, declined, reversed,
-- pending_original or balance -- or the stable code of a refusal that stores nothing
-- (nonce_reused, idempotency_conflict, ...); coupon/answers.py maps it to the HTTP status and
-- body. A replay returns the stored columns, so its body is made the same way, byte for byte.
-- ============================================================================================

CREATE OR REPLACE FUNCTION terminal_request_lock(p_terminal_id bigint, p_request_id text)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(p_terminal_id::int4 # 1234567, hashtext(p_request_id));
$$;

-- Record a nonce; false when this terminal already used it (a replayed request).
CREATE OR REPLACE FUNCTION terminal_nonce_fresh(p_terminal_id bigint, p_nonce text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO terminal_nonces (terminal_id, nonce) VALUES (p_terminal_id, p_nonce)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $$;

-- Counter deltas, added to one shard: this tranche's province rows, then the all-tranche
-- province rows, each table's rows locked in province order before one UPDATE. Every writer
-- goes through here, so two whose backends share a shard never wait on each other in a cycle.
CREATE OR REPLACE FUNCTION counters_apply(
    p_shard integer, p_tranche_id bigint, p_provinces text[], p_transactions bigint[],
    p_amounts bigint[], p_served bigint[], p_all_provinces text[], p_all_served bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM province_counters c
    WHERE c.tranche_id = p_tranche_id AND c.shard = p_shard AND c.province = ANY (p_provinces)
    ORDER BY c.province FOR UPDATE;
    UPDATE province_counters c
    SET transactions = c.transactions + d.tx, amount = c.amount + d.amount,
        served = c.served + d.served
    FROM unnest(p_provinces, p_transactions, p_amounts, p_served) AS d(province, tx, amount, served)
    WHERE c.tranche_id = p_tranche_id AND c.shard = p_shard AND c.province = d.province;
    IF cardinality(p_all_provinces) > 0 THEN
        PERFORM FROM province_counters_all c
        WHERE c.shard = p_shard AND c.province = ANY (p_all_provinces)
        ORDER BY c.province FOR UPDATE;
        UPDATE province_counters_all c SET served = c.served + d.served
        FROM unnest(p_all_provinces, p_all_served) AS d(province, served)
        WHERE c.shard = p_shard AND c.province = d.province;
    END IF;
END $$;

-- Redemptions, many at once: one round trip, one transaction, one WAL flush for all (group
-- commit), set-based -- one statement per step for the whole batch, not per redemption. The
-- answers are those of running the elements one after another in (national id, position)
-- order: a household's redemptions see each other's balance, a repeated request_id replays the
-- first one's answer, a repeated nonce is refused. Row n of the result answers element n.
-- Locks, in the order every writer takes them: the ledger writers' lock, the request keys
-- (by terminal, request id: reverse() takes its two in that order too), the batch's
-- entitlements (by national id), their households (only ever reached through a locked
-- entitlement), counter shards (by tranche, province). Categories come as comma-separated text
-- (an array of arrays must be rectangular).
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

-- Only the service calls the functions that write the ledger.
REVOKE EXECUTE ON FUNCTION
    redeem_many(bigint[], text[], text[], bytea[], text[], bigint[], text[], boolean[], integer),
    reverse(bigint, text, text, bytea, text, integer),
    post_offline_batch(bigint, text, bigint[], text[], bytea[], text[], bigint[], text[],
                       timestamptz[], interval, interval, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    redeem_many(bigint[], text[], text[], bytea[], text[], bigint[], text[], boolean[], integer),
    reverse(bigint, text, text, bytea, text, integer),
    post_offline_batch(bigint, text, bigint[], text[], bytea[], text[], bigint[], text[],
                       timestamptz[], interval, interval, integer)
    TO coupon_writer;
