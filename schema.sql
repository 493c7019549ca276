-- Coupon: the whole schema. `coupon db init` applies this file; every statement is idempotent.
-- Money is integer rials (bigint), time is timestamptz, invariants are CHECKs named
-- <table>_<what>_<kind>. The hot path (redeem, reverse, balance) lives in SQL functions at the
-- end of this file so that a terminal request costs one database round trip.

CREATE TABLE IF NOT EXISTS schema_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- 31 provinces by ISO 3166-2:IR code; rows are loaded by `coupon db init` from pycountry and
-- the iso3166-2 package (names are never typed by hand).
CREATE TABLE IF NOT EXISTS provinces (
    code    text PRIMARY KEY CONSTRAINT provinces_code_check CHECK (code ~ '^IR-[0-9]{2}$'),
    name_en text NOT NULL,
    name_fa text NOT NULL
);

-- The SPEC's national-id rule in SQL: s = sum(d[i] * (10 - i), i = 0..8) % 11; valid iff
-- d9 = s when s < 2, else d9 = 11 - s. A plain expression, so the planner inlines it; the array
-- maps s to its check digit. For one value at a time; the import validates millions of rows
-- with the two-step form below (3x cheaper per row).
CREATE OR REPLACE FUNCTION national_id_is_valid(nid text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN octet_length(nid) = 10 AND nid ~ '^[0-9]{10}$' AND nid <> repeat(left(nid, 1), 10)
   AND ascii(substr(nid, 10, 1)) - 48 = ('{0,1,9,8,7,6,5,4,3,2,1}'::int[])[1 + (
         ascii(substr(nid, 1, 1)) * 10 + ascii(substr(nid, 2, 1)) * 9
       + ascii(substr(nid, 3, 1)) * 8 + ascii(substr(nid, 4, 1)) * 7
       + ascii(substr(nid, 5, 1)) * 6 + ascii(substr(nid, 6, 1)) * 5
       + ascii(substr(nid, 7, 1)) * 4 + ascii(substr(nid, 8, 1)) * 3
       + ascii(substr(nid, 9, 1)) * 2 - 48 * 54) % 11];

-- The same rule in two steps, so that a bulk caller parses each id once and checks it with
-- plain bigint arithmetic (the regex and ten substr() calls above cost ~1.2 s per million
-- rows, these ~0.35 s): national_id_checksum_ok(national_id_number(x)) is true exactly when
-- national_id_is_valid(x) is (false or null otherwise). Compute national_id_number() in a
-- subquery and pass the column: inlining copies the argument into each of its ~15 references.

-- The id as a number: 0..9999999999 when it is exactly 10 ASCII digits, else null or negative.
-- '1' || nid parses to >= 10^10 only when all 11 characters are digits: int8 input also
-- accepts blanks, a sign, underscores or a 0x prefix, but each of those leaves fewer digits.
-- The cast applies to the CASE, not inside it: a constant argument is then never cast at plan
-- time (a constant THEN branch is folded even when its WHEN is false at run time).
-- STABLE, not IMMUTABLE, only because pg_input_is_valid() is (an IMMUTABLE function calling a
-- STABLE one is never inlined).
CREATE OR REPLACE FUNCTION national_id_number(nid text) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN (CASE WHEN octet_length(nid) = 10 AND pg_input_is_valid('1' || nid, 'int8')
             THEN '1' || nid END)::int8 - 10000000000;

-- The checksum on that number: 10 digits, not all alike (n a multiple of 1111111111), and the
-- last digit is the one the array maps s to.
CREATE OR REPLACE FUNCTION national_id_checksum_ok(n bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN n BETWEEN 0 AND 9999999999 AND n % 1111111111 <> 0
   AND n % 10 = ('{0,1,9,8,7,6,5,4,3,2,1}'::int8[])[1 + (
         n / 1000000000 * 10 + n / 100000000 % 10 * 9 + n / 10000000 % 10 * 8
       + n / 1000000 % 10 * 7 + n / 100000 % 10 * 6 + n / 10000 % 10 * 5
       + n / 1000 % 10 * 4 + n / 100 % 10 * 3 + n / 10 % 10 * 2) % 11];

CREATE TABLE IF NOT EXISTS households (
    national_id text COLLATE "C" PRIMARY KEY
        -- full checksum validation happens on the way in (API, import); a regex CHECK here
        -- would cost the bulk import 40 %
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

CREATE TABLE IF NOT EXISTS tranches (
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
    CONSTRAINT tranches_window_check CHECK (starts_at < ends_at),
    -- two redemption windows never overlap, whoever inserts them
    CONSTRAINT tranches_window_excl EXCLUDE USING gist (tstzrange(starts_at, ends_at) WITH &&)
);

CREATE TABLE IF NOT EXISTS tranche_bands (
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
CREATE TABLE IF NOT EXISTS entitlements (
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

CREATE TABLE IF NOT EXISTS merchants (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL CONSTRAINT merchants_name_check CHECK (length(name) BETWEEN 1 AND 200),
    province   text NOT NULL CONSTRAINT merchants_province_fkey REFERENCES provinces (code),
    status     text NOT NULL DEFAULT 'active'
        CONSTRAINT merchants_status_check CHECK (status IN ('active', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS terminals (
    id          bigint GENERATED ALWAYS AS IDENTITY (START WITH 1001) PRIMARY KEY,
    merchant_id bigint NOT NULL CONSTRAINT terminals_merchant_id_fkey REFERENCES merchants (id),
    -- the HMAC key itself: verifying a signature needs it. Never returned after creation.
    secret      text NOT NULL CONSTRAINT terminals_secret_check CHECK (length(secret) >= 32),
    status      text NOT NULL DEFAULT 'active'
        CONSTRAINT terminals_status_check CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS terminals_merchant_id_idx ON terminals (merchant_id);

CREATE TABLE IF NOT EXISTS api_tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash bytea NOT NULL CONSTRAINT api_tokens_token_hash_key UNIQUE,
    role       text NOT NULL CONSTRAINT api_tokens_role_check CHECK (role IN ('operator', 'auditor')),
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Nonces seen per terminal; kept a little longer than the 300 s clock window, then pruned.
CREATE TABLE IF NOT EXISTS terminal_nonces (
    terminal_id bigint NOT NULL,
    nonce       text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT terminal_nonces_pkey PRIMARY KEY (terminal_id, nonce)
);
CREATE INDEX IF NOT EXISTS terminal_nonces_seen_at_idx ON terminal_nonces (seen_at);

-- One row per (terminal, request_id): the idempotency record and its stored answer.
-- kind 'pending_reversal' is a tombstone: a reversal that arrived before its original.
CREATE TABLE IF NOT EXISTS terminal_requests (
    terminal_id bigint NOT NULL,
    request_id  text NOT NULL,
    kind        text NOT NULL
        CONSTRAINT terminal_requests_kind_check CHECK (kind IN ('redemption', 'reversal')),
    body_hash   bytea NOT NULL,
    http_status smallint NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT terminal_requests_pkey PRIMARY KEY (terminal_id, request_id)
);

-- A reversal that names a request the terminal has not sent yet (ISO 8583 style tombstone).
CREATE TABLE IF NOT EXISTS pending_reversals (
    terminal_id         bigint NOT NULL,
    original_request_id text NOT NULL,
    request_id          text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pending_reversals_pkey PRIMARY KEY (terminal_id, original_request_id)
);

-- The ledger: append-only, one row per approved redemption and per reversal.
-- A redemption's id (and a reversal's) is the seq of its ledger row; a reversal row names the
-- redemption it voids in `reverses`, at most once.
CREATE TABLE IF NOT EXISTS ledger (
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
    CONSTRAINT ledger_reverses_check CHECK ((kind = 'reversal') = (reverses IS NOT NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_reverses_key ON ledger (reverses) WHERE reverses IS NOT NULL;
CREATE INDEX IF NOT EXISTS ledger_national_id_idx ON ledger (national_id, seq);
CREATE INDEX IF NOT EXISTS ledger_merchant_id_idx ON ledger (merchant_id, seq);
CREATE INDEX IF NOT EXISTS ledger_created_at_idx ON ledger (created_at);

-- Live counters, sharded so that 31 hot province rows do not serialise redemptions: a
-- transaction adds to one shard; readers sum the shards in one snapshot, so what they see is
-- always exactly what the ledger says.
CREATE TABLE IF NOT EXISTS province_counters (
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
CREATE TABLE IF NOT EXISTS province_counters_all (
    province text NOT NULL,
    shard    smallint NOT NULL,
    served   bigint NOT NULL DEFAULT 0,
    eligible bigint NOT NULL DEFAULT 0,
    CONSTRAINT province_counters_all_pkey PRIMARY KEY (province, shard)
) WITH (fillfactor = 50);
