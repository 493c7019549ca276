-- Every DML statement of the service, one block each: a `-- name: <name>` line, a one-line
-- description, then the statement. coupon.db.queries() maps name -> SQL; a test prepares them all.

-- name: upsert_province
-- Load or refresh one province's names (from pycountry / iso3166-2 at `db init`).
INSERT INTO provinces (code, name_en, name_fa) VALUES ($1, $2, $3)
ON CONFLICT (code) DO UPDATE SET name_en = excluded.name_en, name_fa = excluded.name_fa
WHERE (provinces.name_en, provinces.name_fa) IS DISTINCT FROM (excluded.name_en, excluded.name_fa);

-- name: create_all_tranche_counters
-- One all-tranche counter row per province and shard (idempotent).
INSERT INTO province_counters_all (province, shard)
SELECT p.code, s.shard FROM provinces p CROSS JOIN generate_series(0, $1::int - 1) AS s (shard)
ON CONFLICT DO NOTHING;

-- name: set_meta
-- Record a schema fact (the counter shard count).
INSERT INTO schema_meta (key, value) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: get_meta
-- Read a schema fact.
SELECT value FROM schema_meta WHERE key = $1;

-- name: applied_migrations
-- The migrations recorded in this database, oldest first.
SELECT version, name, checksum, applied_at, applied_as FROM schema_migrations ORDER BY version;

-- name: record_migration
-- Record one migration as applied (in the transaction that applied it).
INSERT INTO schema_migrations (version, name, checksum, applied_as) VALUES ($1, $2, $3, $4);

-- name: create_token
-- Store a new API token by its SHA-256 hash, valid for $4 seconds, of province $5 (null:
-- national); the token itself is never stored.
INSERT INTO api_tokens (token_hash, role, name, expires_at, province)
VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
RETURNING id, expires_at;

-- name: find_token_role
-- The role of the token with this hash, if it is neither expired nor revoked (read on every
-- request: a revocation holds in every process at once).
SELECT role, province FROM api_tokens
WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now();

-- name: list_tokens
-- Every token (never the token itself), newest first.
SELECT id, role, province, name, created_at, expires_at, revoked_at FROM api_tokens
ORDER BY id DESC;

-- name: revoke_token
-- Revoke a token by id; returns nothing when no live token has it.
UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id;

-- name: lock_household_import
-- One import at a time: the insert below relies on nobody else inserting households meanwhile.
SELECT pg_advisory_xact_lock(7365626, 1);

-- name: create_import_lines
-- Raw CSV lines of one import, numbered as in the file (line 1 is the header). UNLOGGED, not
-- TEMP: it lives in shared buffers instead of 8 MB of local ones (spilling to the OS page cache
-- slowed validation and insertion). The import lock makes the fixed
-- name safe; created and dropped (drop_import_tables) inside the import's transaction, it is
-- never visible to anyone else and is gone on rollback.
CREATE UNLOGGED TABLE coupon_staging.import_lines (
    line_no bigint GENERATED ALWAYS AS IDENTITY (START WITH 2),
    line    text
);

-- name: classify_import_lines
-- Split and validate every line set-based: $1 fields per line, $2..$6 the 1-based positions of
-- national_id, province, members, decile and status (null when the file has no status column);
-- $7 the token's province: a scoped token imports only its province's households (null:
-- national, and the checks below are not evaluated).
CREATE UNLOGGED TABLE coupon_staging.import_rows AS
SELECT r.line_no, r.national_id, r.province, r.members, r.decile, r.status,
       CASE
           WHEN r.width <> $1 THEN format('expected %s fields, found %s', $1, r.width)
           WHEN NOT coalesce(national_id_checksum_ok(r.nid_number), false)
               THEN 'invalid national_id (10 digits with a valid check digit)'
           WHEN p.code IS NULL THEN 'unknown province (ISO 3166-2:IR code such as IR-23)'
           WHEN $7::text IS NOT NULL AND r.province <> $7
               THEN 'province outside this token''s scope'
           WHEN $7::text IS NOT NULL AND EXISTS (
                    SELECT FROM households h
                    WHERE h.national_id = r.national_id AND h.province <> $7)
               THEN 'household of a province outside this token''s scope'
           WHEN r.members IS NULL THEN 'members must be an integer 1..30'
           WHEN r.decile IS NULL THEN 'decile must be an integer 1..10'
           WHEN $6::int IS NOT NULL AND r.status IS NULL
               THEN 'status must be active or suspended'
       END AS error
-- each OFFSET 0 keeps its subquery whole, so every line is split and trimmed only once and
-- the checksum gets a plain column (inlining would copy an expression into each reference)
FROM (
    SELECT t.line_no, t.width, t.national_id, national_id_number(t.national_id) AS nid_number,
           t.province,
           -- constant arrays: the planner hashes them (a subquery here cost 0.1 s per million)
           CASE WHEN t.members = ANY ('{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,
                                        21,22,23,24,25,26,27,28,29,30}'::text[])
                THEN t.members::int2 END AS members,
           CASE WHEN t.decile = ANY ('{1,2,3,4,5,6,7,8,9,10}'::text[])
                THEN t.decile::int2 END AS decile,
           CASE WHEN t.status IN ('active', 'suspended') THEN t.status END AS status
    FROM (
        -- most lines have no blank or quote to trim: they skip btrim (a third of the split)
        SELECT l.line_no, cardinality(l.f) AS width,
               CASE WHEN l.plain THEN l.f[$2] ELSE btrim(l.f[$2], ' "') END AS national_id,
               upper(CASE WHEN l.plain THEN l.f[$3] ELSE btrim(l.f[$3], ' "') END) AS province,
               CASE WHEN l.plain THEN l.f[$4] ELSE btrim(l.f[$4], ' "') END AS members,
               CASE WHEN l.plain THEN l.f[$5] ELSE btrim(l.f[$5], ' "') END AS decile,
               lower(CASE WHEN l.plain THEN l.f[$6] ELSE btrim(l.f[$6], ' "') END) AS status
        FROM (SELECT line_no, string_to_array(line, ',') AS f,
                     strpos(line, ' ') = 0 AND strpos(line, '"') = 0 AS plain
              FROM coupon_staging.import_lines
              -- blank lines are skipped; a comma is the cheap proof that a line is not blank
              WHERE strpos(line, ',') > 0 OR btrim(line, E' \t') <> '' OFFSET 0) AS l
        OFFSET 0
    ) AS t
    OFFSET 0
) AS r
LEFT JOIN provinces p ON p.code = r.province;

-- name: households_empty
-- Whether there are no households yet (a first import has no updates to look for).
SELECT NOT EXISTS (SELECT FROM households);

-- name: update_imported_households
-- Update the households of the file that exist and changed (the first good line of a repeated
-- id counts); unchanged rows are not rewritten. Runs before the insert, so it only sees
-- households that existed before the import. Returns how many existed and how many changed.
WITH present AS (
    SELECT DISTINCT ON (r.national_id) r.national_id, r.province, r.members, r.decile, r.status,
           (h.province, h.members, h.decile, h.status)
               IS DISTINCT FROM (r.province, r.members, r.decile, coalesce(r.status, h.status))
               AS changed
    -- sorted first (OFFSET 0 keeps the sort down here): the index is probed in key order, page
    -- after page, not at random (half the time), and DISTINCT ON needs no second sort
    FROM (SELECT national_id, line_no, province, members, decile, status FROM coupon_staging.import_rows
          WHERE error IS NULL ORDER BY national_id, line_no OFFSET 0) AS r
    JOIN households h ON h.national_id = r.national_id
    ORDER BY r.national_id, r.line_no
), updated AS (
    -- only the changed rows are looked up again (and compared again, under the row lock)
    UPDATE households h
    SET province = g.province, members = g.members, decile = g.decile,
        status = coalesce(g.status, h.status), updated_at = now()
    FROM present g
    WHERE g.changed AND h.national_id = g.national_id
      AND (h.province, h.members, h.decile, h.status)
          IS DISTINCT FROM (g.province, g.members, g.decile, coalesce(g.status, h.status))
    RETURNING 1
)
SELECT (SELECT count(*) FROM present) AS present, (SELECT count(*) FROM updated) AS changed;

-- name: insert_new_households
-- Insert the households of the file that do not exist yet, the first good line of a repeated
-- id; the command tag counts them. Sorted first, so the existence probes walk the index in key
-- order and the insert fills it page by page (see insert_first_households).
INSERT INTO households (national_id, province, members, decile, status)
SELECT DISTINCT ON (r.national_id)
       r.national_id, r.province, r.members, r.decile, coalesce(r.status, 'active')
FROM (SELECT national_id, line_no, province, members, decile, status FROM coupon_staging.import_rows
      WHERE error IS NULL ORDER BY national_id, line_no OFFSET 0) AS r
WHERE NOT EXISTS (SELECT FROM households h WHERE h.national_id = r.national_id)
ORDER BY r.national_id, r.line_no;

-- name: insert_first_households
-- insert_new_households into an empty table (the import lock keeps it so): no existence probes.
-- In key order the primary-key index fills page by page instead of at random (the insert takes
-- half the time), and the heap ends up in key order, which the tranche opening then reads.
INSERT INTO households (national_id, province, members, decile, status)
SELECT DISTINCT ON (national_id)
       national_id, province, members, decile, coalesce(status, 'active')
FROM coupon_staging.import_rows
WHERE error IS NULL
ORDER BY national_id, line_no;

-- name: reject_import_duplicates
-- A national id repeated in the file: the first line counts, later ones are rejected. Only run
-- when the counts show a repeat (the upsert already let the first line win).
WITH firsts AS (
    SELECT national_id, min(line_no) AS first_line FROM coupon_staging.import_rows
    WHERE error IS NULL GROUP BY national_id HAVING count(*) > 1
)
UPDATE coupon_staging.import_rows r SET error = 'duplicate of line ' || f.first_line
FROM firsts f
WHERE r.national_id = f.national_id AND r.line_no > f.first_line AND r.error IS NULL;

-- name: import_rejections
-- The rejected lines with their reasons, in file order: the first $1 (null: all).
SELECT line_no AS line, error FROM coupon_staging.import_rows WHERE error IS NOT NULL
ORDER BY line_no LIMIT $1;

-- name: import_rejection_counts
-- How many lines were rejected, by reason (the reason's text with its numbers as N).
SELECT regexp_replace(error, '[0-9]+', 'N', 'g') AS reason, count(*) AS lines
FROM coupon_staging.import_rows WHERE error IS NOT NULL
GROUP BY 1 ORDER BY 2 DESC, 1;

-- name: drop_import_tables
-- The import's staging tables, at the end of its transaction (see create_import_lines).
DROP TABLE coupon_staging.import_lines, coupon_staging.import_rows;

-- name: set_household_status
-- Suspend or reactivate a household of the token's province ($3; null: national). No row: no
-- such household; a row of nulls: another province's.
WITH target AS (SELECT national_id, province FROM households WHERE national_id = $1),
changed AS (
    UPDATE households h SET status = $2, updated_at = now() FROM target
    WHERE h.national_id = target.national_id AND ($3::text IS NULL OR target.province = $3)
    RETURNING h.national_id, h.province, h.members, h.decile, h.status)
SELECT changed.* FROM target LEFT JOIN changed ON true;

-- name: lock_tranches
-- Serialise tranche creation: the carry-over source and the window check must not race.
LOCK TABLE tranches IN SHARE ROW EXCLUSIVE MODE;

-- name: previous_tranche
-- The tranche whose window ends last before the given start (the carry-over source).
SELECT id, ends_at FROM tranches WHERE ends_at <= $1 ORDER BY ends_at DESC LIMIT 1;

-- name: insert_tranche
-- A new tranche; the exclusion constraint rejects an overlapping window. Tranches are national:
-- nothing is inserted for a province-scoped token ($9 not null).
INSERT INTO tranches (name, starts_at, ends_at, categories, carry_over, carried_from,
                      offline_allowance, offline_max_amount)
SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE $9::text IS NULL
RETURNING id;

-- name: insert_tranche_bands
-- The decile bands of a tranche.
INSERT INTO tranche_bands (tranche_id, up_to_decile, per_member_credit, opens_at)
SELECT $1, * FROM unnest($2::int2[], $3::int8[], $4::timestamptz[]);

-- name: credit_tranche
-- Credit every active household in a band, in one statement: per_member_credit * members, plus
-- the unspent balance of the carry-over source tranche ($2, null when none). Returns the
-- per-province figures for the counters.
WITH band AS (
    SELECT per_member_credit, opens_at,
           coalesce(lag(up_to_decile) OVER (ORDER BY up_to_decile), 0) AS above_decile,
           up_to_decile
    FROM tranche_bands WHERE tranche_id = $1
), credited AS (
    INSERT INTO entitlements
        (national_id, tranche_id, province, credit, carried_in, balance, opens_at, first_credit)
    SELECT h.national_id, $1, h.province,
           b.per_member_credit * h.members,
           coalesce(prev.balance, 0),
           b.per_member_credit * h.members + coalesce(prev.balance, 0),
           b.opens_at,
           NOT EXISTS (SELECT FROM entitlements e WHERE e.national_id = h.national_id)
    FROM households h
    JOIN band b ON h.decile > b.above_decile AND h.decile <= b.up_to_decile
    LEFT JOIN entitlements prev ON prev.national_id = h.national_id AND prev.tranche_id = $2
    WHERE h.status = 'active'
    -- in key order the primary-key index fills page by page instead of at random
    ORDER BY h.national_id
    RETURNING province, credit + carried_in AS total, first_credit
)
SELECT province, count(*) AS households, sum(total)::bigint AS total,
       count(*) FILTER (WHERE first_credit) AS first_credited
FROM credited GROUP BY province;

-- name: carry_out_balances
-- Move the carried balances out of the source tranche so money is never counted twice.
UPDATE entitlements prev SET carried_out = prev.carried_out + prev.balance, balance = 0
FROM entitlements cur
WHERE cur.tranche_id = $1 AND cur.carried_in > 0
  AND prev.national_id = cur.national_id AND prev.tranche_id = $2 AND prev.balance > 0;

-- name: create_tranche_counters
-- Counter shards of a new tranche, with each province's eligible households on shard 0.
INSERT INTO province_counters (tranche_id, province, shard, eligible)
SELECT $1, p.code, s.shard,
       CASE WHEN s.shard = 0 THEN coalesce(e.households, 0) ELSE 0 END
FROM provinces p
CROSS JOIN generate_series(0, $2::int - 1) AS s (shard)
LEFT JOIN unnest($3::text[], $4::int8[]) AS e (province, households) ON e.province = p.code;

-- name: add_all_tranche_eligible
-- Households credited for the first time join the all-tranche eligible counts (shard 0).
UPDATE province_counters_all c SET eligible = c.eligible + e.households
FROM unnest($1::text[], $2::int8[]) AS e (province, households)
WHERE c.province = e.province AND c.shard = 0 AND e.households > 0;

-- name: finish_tranche
-- Record what opening the tranche credited.
UPDATE tranches SET households_credited = $2, total_credit = $3 WHERE id = $1;

-- name: list_tranches
-- Every tranche with its bands, newest window first.
SELECT t.id, t.name, t.starts_at, t.ends_at, t.categories, t.carry_over, t.carried_from,
       t.households_credited, t.total_credit, t.created_at, t.offline_allowance,
       t.offline_max_amount,
       coalesce(
           (SELECT jsonb_agg(jsonb_build_object(
                       'up_to_decile', b.up_to_decile,
                       'per_member_credit', b.per_member_credit,
                       'opens_at', b.opens_at) ORDER BY b.up_to_decile)
            FROM tranche_bands b WHERE b.tranche_id = t.id),
           '[]'::jsonb) AS bands
FROM tranches t ORDER BY t.starts_at DESC;

-- name: insert_merchant
-- Register a store of category $3, when its province is the token's ($4; null: national).
INSERT INTO merchants (name, province, category) SELECT $1, $2, $3 WHERE $4::text IS NULL OR $2 = $4
RETURNING id;

-- name: set_merchant_status
-- Suspend or reactivate a store of the token's province ($3; null: national). No row: no such
-- store; a row of nulls: the store is of another province.
WITH target AS (SELECT id, province FROM merchants WHERE id = $1),
changed AS (
    UPDATE merchants m SET status = $2 FROM target
    WHERE m.id = target.id AND ($3::text IS NULL OR target.province = $3)
    RETURNING m.id, m.name, m.province, m.status, m.category)
SELECT changed.* FROM target LEFT JOIN changed ON true;

-- name: next_terminal_id
-- The id a new terminal gets (its secret is encrypted bound to it before the row exists).
SELECT nextval(pg_get_serial_sequence('terminals', 'id'));

-- name: insert_terminal
-- Register a POS terminal of an existing store of the token's province ($4; null: national)
-- with its encrypted HMAC secret. No row: no such store; a null id: another province's store.
WITH target AS (SELECT id, province FROM merchants WHERE id = $1),
made AS (
    INSERT INTO terminals (id, merchant_id, secret_box) OVERRIDING SYSTEM VALUE
    SELECT $3, target.id, $2 FROM target WHERE $4::text IS NULL OR target.province = $4
    RETURNING id)
SELECT made.id FROM target LEFT JOIN made ON true;

-- name: terminal_keys_changed
-- Say that a terminal's secret was made or changed (see terminal_key_changes_seq).
SELECT nextval('terminal_key_changes_seq');

-- name: terminal_keys_version
-- How many times terminal secrets were made or changed (0: never).
SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM terminal_key_changes_seq;

-- name: rotate_terminal_secret
-- A terminal's new secret; the one it replaces verifies for $3 more seconds. Only a terminal
-- of a store of the token's province ($4; null: national): no row, no such terminal; a row of
-- nulls, another province's.
WITH target AS (
    SELECT t.id, m.province FROM terminals t JOIN merchants m ON m.id = t.merchant_id
    WHERE t.id = $1),
rotated AS (
    UPDATE terminals t
    SET previous_box = t.secret_box, previous_until = now() + make_interval(secs => $3),
        secret_box = $2
    FROM target
    WHERE t.id = target.id AND ($4::text IS NULL OR target.province = $4)
    RETURNING t.id, t.previous_until)
SELECT rotated.* FROM target LEFT JOIN rotated ON true;

-- name: plain_terminal_secrets
-- Secrets still in plain text (stored by versions before 0.3).
SELECT id, secret FROM terminals WHERE secret IS NOT NULL ORDER BY id;

-- name: encrypt_terminal_secret
-- A plain-text secret replaced by its encrypted form.
UPDATE terminals SET secret_box = $2, secret = NULL WHERE id = $1 AND secret IS NOT NULL;

-- name: terminal_boxes
-- Every terminal's encrypted secrets, to re-encrypt them under a new key.
SELECT id, secret_box, previous_box FROM terminals WHERE secret_box IS NOT NULL ORDER BY id;

-- name: rewrap_terminal_secret
-- One terminal's secrets re-encrypted, unless they changed meanwhile.
UPDATE terminals SET secret_box = $3, previous_box = $4
WHERE id = $1 AND secret_box = $2;

-- name: set_terminal_status
-- Suspend or reactivate a POS terminal, and/or let it work offline or not (null: unchanged),
-- of a store of the token's province ($4; null: national). No row: no such terminal; a row of
-- nulls: another province's.
WITH target AS (
    SELECT t.id, m.province FROM terminals t JOIN merchants m ON m.id = t.merchant_id
    WHERE t.id = $1),
changed AS (
    UPDATE terminals t
    SET status = coalesce($2, t.status), offline_enabled = coalesce($3, t.offline_enabled)
    FROM target
    WHERE t.id = target.id AND ($4::text IS NULL OR target.province = $4)
    RETURNING t.id, t.merchant_id, t.status, t.offline_enabled)
SELECT changed.* FROM target LEFT JOIN changed ON true;

-- name: terminal_secret
-- The encrypted HMAC secrets of a terminal, to verify its signatures: the current one, and the
-- one a rotation replaced while it still verifies.
SELECT secret_box,
       CASE WHEN previous_until > now() THEN previous_box END AS previous_box,
       previous_until
FROM terminals WHERE id = $1;

-- name: redeem_many
-- Group commit: many redemptions, one round trip, one transaction (SQL function redeem_many()).
SELECT n, outcome, reason, entry_id, amount, remaining, tranche_id, province, merchant_id,
       created_at, replayed
FROM redeem_many($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: reverse
-- A reversal of this terminal's earlier redemption (SQL function reverse()).
SELECT outcome, entry_id, amount, remaining, replayed FROM reverse($1, $2, $3, $4, $5, $6);

-- name: balance_inquiry
-- A household's eligibility and remaining credit in the current tranche.
SELECT outcome, reason, tranche_id, remaining, ends_at FROM balance_inquiry($1, $2, $3);

-- name: post_offline_batch
-- Purchases approved offline, forwarded in one batch (SQL function post_offline_batch()).
SELECT offline_seq, request_id, outcome, reason, entry_id, amount, remaining, tranche_id,
       posted_at, replayed
FROM post_offline_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12);

-- name: last_offline_seqs
-- Each terminal's highest offline_seq forwarded (the demo's terminals number on from there).
SELECT terminal_id, max(offline_seq) AS last_seq FROM offline_purchases GROUP BY terminal_id;

-- name: offline_gaps
-- The offline_seq numbers a terminal has not forwarded below the highest it has: ranges
-- (first, last), the first $2 of them, and the highest.
SELECT coalesce(array_agg(g.prev + 1 ORDER BY g.prev) FILTER (WHERE g.k <= $2), '{}') AS firsts,
       coalesce(array_agg(g.offline_seq - 1 ORDER BY g.prev) FILTER (WHERE g.k <= $2), '{}')
           AS lasts,
       (SELECT max(offline_seq) FROM offline_purchases WHERE terminal_id = $1) AS last_seq
FROM (SELECT s.prev, s.offline_seq, row_number() OVER (ORDER BY s.prev) AS k
      FROM (SELECT offline_seq, lag(offline_seq, 1, 0::bigint) OVER (ORDER BY offline_seq) AS prev
            FROM offline_purchases WHERE terminal_id = $1) s
      WHERE s.offline_seq > s.prev + 1) g;

-- name: terminals_with_gaps
-- Every terminal that forwarded offline purchases with offline_seq numbers missing below its
-- highest: how many are missing, and the highest. Of the stores of province $1 only, when given
-- (a province-scoped token).
SELECT o.terminal_id, t.merchant_id, max(o.offline_seq) AS last_offline_seq,
       (max(o.offline_seq) - count(*))::bigint AS missing
FROM offline_purchases o JOIN terminals t ON t.id = o.terminal_id
WHERE $1::text IS NULL OR t.merchant_id IN (SELECT id FROM merchants WHERE province = $1)
GROUP BY o.terminal_id, t.merchant_id
HAVING max(o.offline_seq) > count(*)
ORDER BY o.terminal_id;

-- name: reconciliation_entries
-- What the processor booked for one terminal ($1, its store $2) on one Asia/Tehran day ($3):
-- redemptions online by posting time, redemptions forwarded from offline by capture time
-- (posted at most $4 later), reversals by posting time.
SELECT CASE WHEN l.kind = 'reversal' THEN 'reversals'
            WHEN l.captured_at IS NULL THEN 'online_redemptions'
            ELSE 'offline_redemptions' END AS total,
       l.request_id, l.amount
FROM ledger l
WHERE l.merchant_id = $2 AND l.terminal_id = $1
  AND l.created_at >= ($3::date::timestamp AT TIME ZONE 'Asia/Tehran')
  AND l.created_at < (($3::date + 1)::timestamp AT TIME ZONE 'Asia/Tehran') + $4::interval
  AND coalesce(l.captured_at, l.created_at)
      < (($3::date + 1)::timestamp AT TIME ZONE 'Asia/Tehran')
  AND coalesce(l.captured_at, l.created_at)
      >= ($3::date::timestamp AT TIME ZONE 'Asia/Tehran')
ORDER BY l.seq;

-- name: terminal_merchant
-- A terminal's store, once its request's nonce is recorded (null merchant: the nonce was used).
SELECT CASE WHEN terminal_nonce_fresh($1, $2) THEN merchant_id END AS merchant_id
FROM terminals WHERE id = $1;

-- name: save_reconciliation
-- A terminal's reconciliation of a day; a later one of the same day replaces it.
INSERT INTO terminal_reconciliations (terminal_id, business_date, status, reported, processor,
                                      differences, processor_only, terminal_only)
VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb, $6::text::jsonb, $7, $8)
ON CONFLICT (terminal_id, business_date) DO UPDATE
SET status = excluded.status, reported = excluded.reported, processor = excluded.processor,
    differences = excluded.differences, processor_only = excluded.processor_only,
    terminal_only = excluded.terminal_only, reconciled_at = now();

-- name: list_reconciliations
-- The terminals' reconciliations of one day ($1), of one status ($2) when given, by terminal;
-- of the stores of province $3 only, when given.
SELECT r.terminal_id, t.merchant_id, r.business_date, r.status, r.reported::text AS reported,
       r.processor::text AS processor, r.differences::text AS differences, r.processor_only,
       r.terminal_only, r.reconciled_at
FROM terminal_reconciliations r JOIN terminals t ON t.id = r.terminal_id
WHERE r.business_date = $1 AND ($2::text IS NULL OR r.status = $2)
  AND ($3::text IS NULL OR t.merchant_id IN (SELECT id FROM merchants WHERE province = $3))
ORDER BY r.terminal_id;

-- name: offline_declines
-- The offline purchases declined when posted on one Asia/Tehran day ($1), of one store ($2)
-- when given, of the stores of province $3 only when given: each is the store's loss, with its
-- reason.
SELECT o.terminal_id, t.merchant_id, o.offline_seq, o.request_id, o.national_id, o.amount,
       o.captured_at, o.posted_at, r.reason
FROM offline_purchases o
JOIN terminal_requests r ON r.terminal_id = o.terminal_id AND r.request_id = o.request_id
JOIN terminals t ON t.id = o.terminal_id
WHERE o.posted_at >= ($1::date::timestamp AT TIME ZONE 'Asia/Tehran')
  AND o.posted_at < (($1::date + 1)::timestamp AT TIME ZONE 'Asia/Tehran')
  AND r.outcome = 'declined' AND ($2::bigint IS NULL OR t.merchant_id = $2)
  AND ($3::text IS NULL OR t.merchant_id IN (SELECT id FROM merchants WHERE province = $3))
ORDER BY o.posted_at, o.terminal_id, o.offline_seq;

-- name: prune_nonces
-- Forget nonces older than the clock window: a request that old is refused by its timestamp.
DELETE FROM terminal_nonces WHERE seen_at < now() - make_interval(secs => $1);

-- name: stats
-- Live counters per province, for one tranche ($1) or all of them ($1 null): the shards
-- summed in one snapshot. served/eligible over all tranches count each household once.
WITH per_tranche AS (
    SELECT province, sum(transactions) AS transactions, sum(amount) AS amount,
           sum(served) AS served, sum(eligible) AS eligible
    FROM province_counters
    WHERE $1::bigint IS NULL OR tranche_id = $1
    GROUP BY province
), all_tranches AS (
    SELECT province, sum(served) AS served, sum(eligible) AS eligible
    FROM province_counters_all
    WHERE $1::bigint IS NULL
    GROUP BY province
)
SELECT p.code, p.name_en, p.name_fa,
       coalesce(t.transactions, 0)::bigint AS transactions,
       coalesce(t.amount, 0)::bigint AS amount,
       coalesce(CASE WHEN $1::bigint IS NULL THEN a.served ELSE t.served END, 0)::bigint
           AS served_households,
       coalesce(CASE WHEN $1::bigint IS NULL THEN a.eligible ELSE t.eligible END, 0)::bigint
           AS eligible_households,
       statement_timestamp() AS as_of
FROM provinces p
LEFT JOIN per_tranche t ON t.province = p.code
LEFT JOIN all_tranches a ON a.province = p.code
ORDER BY p.code;

-- name: tranche_exists
-- Whether a tranche id is known.
SELECT EXISTS (SELECT FROM tranches WHERE id = $1);

-- name: ledger_page
-- One page of the ledger in seq order after a cursor, up to a commit horizon (a lower seq can
-- commit after a higher one: a page past the horizon could skip it); filters: null = any ($12:
-- 'online', or 'offline' for purchases forwarded from offline).
-- Run with plan_cache_mode = force_custom_plan so each call is planned for its own filters;
-- the inner select finds the page's seqs (often from an index alone), the outer fetches rows.
SELECT seq, kind, seq AS entry_id, request_id, terminal_id, merchant_id, national_id, province,
       tranche_id, amount, created_at, captured_at
FROM ledger
WHERE seq IN (
    SELECT seq FROM ledger
    WHERE ($1::text IS NULL OR national_id = $1)
      AND ($2::bigint IS NULL OR merchant_id = $2)
      AND ($3::bigint IS NULL OR terminal_id = $3)
      AND ($4::text IS NULL OR province = $4)
      AND ($5::bigint IS NULL OR tranche_id = $5)
      AND ($6::text IS NULL OR kind = $6)
      AND ($7::timestamptz IS NULL OR created_at >= $7)
      AND ($8::timestamptz IS NULL OR created_at < $8)
      AND ($12::text IS NULL OR (captured_at IS NOT NULL) = ($12 = 'offline'))
      AND seq > $9 AND seq <= $11
      -- a province-scoped auditor's token: the rows of its province's stores only
      AND ($13::text IS NULL OR merchant_id IN (SELECT id FROM merchants WHERE province = $13))
    ORDER BY seq
    LIMIT $10
)
ORDER BY seq;

-- name: ledger_page_in_window
-- The same page when a time window is given. `seq + 0` keeps the planner from walking the
-- whole ledger in seq order hoping to meet the window early (created_at only roughly follows
-- seq): it collects the window's seqs from a time index instead and keeps the first ones.
SELECT seq, kind, seq AS entry_id, request_id, terminal_id, merchant_id, national_id, province,
       tranche_id, amount, created_at, captured_at
FROM ledger
WHERE seq IN (
    SELECT seq FROM ledger
    WHERE ($1::text IS NULL OR national_id = $1)
      AND ($2::bigint IS NULL OR merchant_id = $2)
      AND ($3::bigint IS NULL OR terminal_id = $3)
      AND ($4::text IS NULL OR province = $4)
      AND ($5::bigint IS NULL OR tranche_id = $5)
      AND ($6::text IS NULL OR kind = $6)
      AND ($7::timestamptz IS NULL OR created_at >= $7)
      AND ($8::timestamptz IS NULL OR created_at < $8)
      AND ($12::text IS NULL OR (captured_at IS NOT NULL) = ($12 = 'offline'))
      AND seq > $9 AND seq <= $11
      -- a province-scoped auditor's token: the rows of its province's stores only
      AND ($13::text IS NULL OR merchant_id IN (SELECT id FROM merchants WHERE province = $13))
    ORDER BY seq + 0
    LIMIT $10
)
ORDER BY seq;

-- name: settlement
-- Per store, one Asia/Tehran calendar day: redemptions, reversals and what the store is owed;
-- of the redemptions, those forwarded from offline; and the offline purchases declined when
-- they were posted that day (the store's loss: it had handed the goods over). The stores of
-- province $2 only, when given (a province-scoped token).
WITH day AS (
    SELECT ($1::date::timestamp AT TIME ZONE 'Asia/Tehran') AS starts,
           (($1::date + 1)::timestamp AT TIME ZONE 'Asia/Tehran') AS ends
), booked AS (
    SELECT l.merchant_id,
           count(*) FILTER (WHERE l.kind = 'redemption') AS redemptions,
           count(*) FILTER (WHERE l.kind = 'reversal') AS reversals,
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'redemption'), 0) AS redeemed_amount,
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'reversal'), 0) AS reversed_amount,
           coalesce(sum(CASE l.kind WHEN 'redemption' THEN l.amount ELSE -l.amount END), 0)
               AS net_amount,
           count(*) FILTER (WHERE l.captured_at IS NOT NULL) AS offline_redemptions,
           coalesce(sum(l.amount) FILTER (WHERE l.captured_at IS NOT NULL), 0) AS offline_amount
    FROM ledger l, day
    WHERE l.created_at >= day.starts AND l.created_at < day.ends
    GROUP BY l.merchant_id
), lost AS (
    SELECT t.merchant_id, count(*) AS declined_offline, sum(o.amount) AS declined_offline_amount
    FROM offline_purchases o
    JOIN terminal_requests r ON r.terminal_id = o.terminal_id AND r.request_id = o.request_id
    JOIN terminals t ON t.id = o.terminal_id, day
    WHERE o.posted_at >= day.starts AND o.posted_at < day.ends AND r.outcome = 'declined'
    GROUP BY t.merchant_id
)
SELECT m.id AS merchant_id, m.name, m.province,
       coalesce(b.redemptions, 0) AS redemptions, coalesce(b.reversals, 0) AS reversals,
       coalesce(b.redeemed_amount, 0)::bigint AS redeemed_amount,
       coalesce(b.reversed_amount, 0)::bigint AS reversed_amount,
       coalesce(b.net_amount, 0)::bigint AS net_amount,
       coalesce(b.offline_redemptions, 0) AS offline_redemptions,
       coalesce(b.offline_amount, 0)::bigint AS offline_amount,
       coalesce(x.declined_offline, 0) AS declined_offline,
       coalesce(x.declined_offline_amount, 0)::bigint AS declined_offline_amount
FROM booked b
FULL JOIN lost x ON x.merchant_id = b.merchant_id
JOIN merchants m ON m.id = coalesce(b.merchant_id, x.merchant_id)
WHERE $2::text IS NULL OR m.province = $2
ORDER BY m.id;

-- name: ledger_horizon
-- Wait for every writer holding the ledger's shared lock to commit, then read max(seq): every
-- seq up to it is now committed or never will be. A standby's writers are the primary's, out of
-- reach of its locks: there the horizon is the last sealed row (the sealer sealed only below the
-- primary's horizon, and a snapshot that sees a block sees every row it covers).
SELECT pg_advisory_xact_lock(7365626, 2),
       CASE WHEN pg_is_in_recovery()
            THEN (SELECT coalesce(max(last_seq), 0) FROM ledger_blocks)
            ELSE (SELECT coalesce(max(seq), 0) FROM ledger)
       END AS horizon;

-- name: lock_sealer
-- One sealer at a time, whichever process runs it.
SELECT pg_advisory_xact_lock(7365626, 3);

-- name: last_block
-- The chain's current head, and whether it is signed.
SELECT block_no, last_seq, hash,
       EXISTS (SELECT FROM ledger_block_signatures s WHERE s.block_no = b.block_no) AS signed
FROM ledger_blocks b ORDER BY block_no DESC LIMIT 1;

-- name: unsigned_blocks
-- Blocks sealed before heads were signed, oldest first.
SELECT b.block_no, b.last_seq, b.hash
FROM ledger_blocks b
WHERE NOT EXISTS (SELECT FROM ledger_block_signatures s WHERE s.block_no = b.block_no)
ORDER BY b.block_no;

-- name: sign_block
-- A block's head signature.
INSERT INTO ledger_block_signatures (block_no, signer, signature) VALUES ($1, $2, $3);

-- name: block_heads
-- Every block's head and signature, in chain order (NULLs: unsigned).
SELECT b.block_no, b.first_seq, b.last_seq, b.entries, b.prev_hash, b.hash, s.signer,
       s.signature
FROM ledger_blocks b LEFT JOIN ledger_block_signatures s ON s.block_no = b.block_no
ORDER BY b.block_no;

-- name: export_rows
-- Every sealed ledger row, with all its digest's fields, in seq order (up to a head).
SELECT seq, kind, request_id, terminal_id, merchant_id, national_id, province, tranche_id,
       amount, reverses, created_at, captured_at
FROM ledger WHERE seq <= $1 ORDER BY seq;

-- name: seal_rows
-- Digest the rows (after, up to] into a new block's seals; at most $4 rows per block.
INSERT INTO ledger_seals (seq, block_no, digest)
SELECT seq, $3, ledger_digest(seq, kind, request_id, terminal_id, merchant_id, national_id,
                              province, tranche_id, amount, reverses, created_at, captured_at)
FROM ledger WHERE seq > $1 AND seq <= $2
ORDER BY seq
LIMIT $4;

-- name: close_block
-- Chain the new block: hash = sha256(previous hash || its digests in seq order). Its seals
-- are the ones after the previous block's last seq ($3): found through the primary key, not
-- by reading every seal ever made.
INSERT INTO ledger_blocks (block_no, first_seq, last_seq, entries, prev_hash, hash)
SELECT $1, min(seq), max(seq), count(*), $2::bytea,
       sha256($2::bytea || string_agg(digest, ''::bytea ORDER BY seq))
FROM ledger_seals WHERE seq > $3 AND block_no = $1
HAVING count(*) > 0
RETURNING block_no, last_seq, hash;

-- name: verify_chain
-- Recompute every block from the ledger rows themselves (not from the seals): a block covers
-- every seq after the previous block's last one, so a row slipped into a gap is caught too.
-- Returns the first block, in chain order, whose link, row count or hash does not hold.
SELECT b.block_no, b.first_seq, b.last_seq, b.prev_end
FROM (
    SELECT block_no, first_seq, last_seq, entries, prev_hash, hash,
           lag(last_seq, 1, 0::bigint) OVER w AS prev_end,
           lag(hash, 1, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
               OVER w AS expected_prev
    FROM ledger_blocks
    WINDOW w AS (ORDER BY block_no)
) b
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           sha256(b.prev_hash || coalesce(string_agg(
               ledger_digest(l.seq, l.kind, l.request_id, l.terminal_id, l.merchant_id,
                             l.national_id, l.province, l.tranche_id, l.amount, l.reverses,
                             l.created_at, l.captured_at),
               ''::bytea ORDER BY l.seq), ''::bytea)) AS hash
    FROM ledger l WHERE l.seq > b.prev_end AND l.seq <= b.last_seq
) d
WHERE b.prev_hash <> b.expected_prev OR d.n <> b.entries OR d.hash <> b.hash
ORDER BY b.block_no
LIMIT 1;

-- name: first_bad_row
-- Inside one block's range ($1, $2]: the first seq whose row is missing, has no seal, or does
-- not match its seal.
SELECT min(coalesce(l.seq, s.seq))
FROM (SELECT * FROM ledger WHERE seq > $1 AND seq <= $2) l
FULL JOIN (SELECT * FROM ledger_seals WHERE seq > $1 AND seq <= $2) s ON s.seq = l.seq
WHERE l.seq IS NULL OR s.seq IS NULL
   OR s.digest <> ledger_digest(l.seq, l.kind, l.request_id, l.terminal_id, l.merchant_id,
                                l.national_id, l.province, l.tranche_id, l.amount, l.reverses,
                                l.created_at, l.captured_at);

-- name: count_ledger
-- How many entries the ledger holds.
SELECT count(*) FROM ledger;

-- name: unanswered_ledger_row
-- The first ledger row without exactly one stored terminal answer that made it (same terminal,
-- request id, amount and, for a redemption, store), or the first answer whose row is missing:
-- rows enter the ledger only as answers to signed terminal requests.
SELECT coalesce(l.seq, a.entry_id) AS seq, l.seq IS NULL AS missing
FROM ledger l
FULL JOIN (SELECT * FROM terminal_requests WHERE entry_id IS NOT NULL) a
       ON a.entry_id = l.seq AND a.terminal_id = l.terminal_id AND a.request_id = l.request_id
      AND a.amount = l.amount
      AND a.outcome = CASE l.kind WHEN 'redemption' THEN 'approved' ELSE 'reversed' END
      AND (l.kind = 'reversal' OR a.merchant_id = l.merchant_id)
WHERE l.seq IS NULL OR a.entry_id IS NULL
ORDER BY 1, 2
LIMIT 1;

-- name: unbalanced_entitlement
-- The first household and tranche whose credit spent (credit + carried in - carried out -
-- remaining) is not what the ledger says it redeemed net of reversals.
SELECT coalesce(e.national_id, l.national_id) AS national_id,
       coalesce(e.tranche_id, l.tranche_id) AS tranche_id,
       e.spent, coalesce(l.net, 0)::bigint AS net
FROM (SELECT national_id, tranche_id, credit + carried_in - carried_out - balance AS spent
      FROM entitlements) e
FULL JOIN (SELECT national_id, tranche_id,
                  sum(CASE kind WHEN 'redemption' THEN amount ELSE -amount END) AS net
           FROM ledger GROUP BY national_id, tranche_id) l
       ON l.national_id = e.national_id AND l.tranche_id = e.tranche_id
WHERE e.spent IS DISTINCT FROM coalesce(l.net, 0)
ORDER BY 1, 2
LIMIT 1;

-- name: unbalanced_settlement
-- The first store whose settlement (the ledger's rows of it, as the settlement report sums
-- them) differs from what its terminals were answered: approved minus reversed.
SELECT coalesce(s.merchant_id, a.merchant_id) AS merchant_id,
       coalesce(s.net, 0)::bigint AS settled, coalesce(a.net, 0)::bigint AS answered
FROM (SELECT m.id AS merchant_id,
             sum(CASE l.kind WHEN 'redemption' THEN l.amount ELSE -l.amount END) AS net
      FROM ledger l JOIN merchants m ON m.id = l.merchant_id GROUP BY m.id) s
FULL JOIN (SELECT t.merchant_id,
                  sum(CASE r.outcome WHEN 'approved' THEN r.amount ELSE -r.amount END) AS net
           FROM terminal_requests r JOIN terminals t ON t.id = r.terminal_id
           WHERE r.outcome IN ('approved', 'reversed')
           GROUP BY t.merchant_id) a
       ON a.merchant_id = s.merchant_id
WHERE coalesce(s.net, 0) <> coalesce(a.net, 0)
ORDER BY 1
LIMIT 1;

-- name: block_with_hash
-- Whether the chain still holds a block an auditor recorded.
SELECT block_no, last_seq FROM ledger_blocks WHERE hash = $1;

-- name: ledger_head
-- The highest ledger seq (0 when the ledger is empty).
SELECT coalesce(max(seq), 0)::bigint FROM ledger;

-- name: ledger_changes
-- The live counters' change detector, one cheap round trip without locks: ledger seqs committed
-- above $1 (at most $3 of them), which of the awaited seqs $2 (drawn by transactions that had
-- not committed at the last look) are visible now, and how many tranches exist (opening one
-- changes the eligible counts).
SELECT array(SELECT seq FROM ledger WHERE seq > $1 ORDER BY seq LIMIT $3) AS new_seqs,
       array(SELECT seq FROM ledger WHERE seq = ANY ($2::bigint[])) AS committed,
       (SELECT count(*) FROM tranches) AS tranches;

-- name: try_stats_publisher_lock
-- Become this database's stats publisher: a session lock, gone when its connection ends.
SELECT pg_try_advisory_lock(7365626, 4);

-- name: publish_stats_version
-- Announce a change of the counters to every listening process, under a new stream version.
WITH v AS (SELECT nextval('stats_version_seq') AS version)
SELECT version, pg_notify($1, version::text) FROM v;

-- name: stats_version
-- The last stream version announced (0 before the first).
SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM stats_version_seq;

-- name: current_tranche
-- The tranche whose redemption window contains now, if any.
SELECT id FROM tranches WHERE tstzrange(starts_at, ends_at) @> now();

-- name: terminal_ids
-- Every terminal's id.
SELECT id FROM terminals;

-- name: demo_shoppers
-- Households for the demo's simulated traffic (at most $1): province, and whether the current
-- tranche credits them.
SELECT h.national_id, h.province, e.national_id IS NOT NULL AS entitled
FROM households h
LEFT JOIN entitlements e
    ON e.national_id = h.national_id
   AND e.tranche_id = (SELECT id FROM tranches WHERE tstzrange(starts_at, ends_at) @> now())
WHERE h.status = 'active'
LIMIT $1;

-- name: insight_tranches
-- Every tranche's name and window, newest window first (for the dashboard's labels).
SELECT id, name, starts_at, ends_at FROM tranches ORDER BY starts_at DESC;

-- name: insight_history
-- Net transactions, net rials and newly served households of tranche $1 per $2 ('minute',
-- 'hour' or 'day', Asia/Tehran) from $3 on; served counts a household at its first redemption.
WITH t AS (
    SELECT starts_at, ends_at FROM tranches WHERE id = $1
), entries AS (
    SELECT l.national_id, l.kind, l.amount, l.created_at
    FROM ledger l, t
    WHERE l.created_at >= greatest(t.starts_at, $3::timestamptz) AND l.created_at < t.ends_at
      AND l.tranche_id = $1
), firsts AS (
    SELECT national_id, min(created_at) AS first_at
    FROM ledger l, t
    WHERE l.created_at >= t.starts_at AND l.created_at < t.ends_at
      AND l.tranche_id = $1 AND l.kind = 'redemption'
    GROUP BY national_id
), moves AS (
    SELECT date_trunc($2, created_at, 'Asia/Tehran') AS at,
           CASE WHEN kind = 'redemption' THEN 1 ELSE -1 END AS transactions,
           CASE WHEN kind = 'redemption' THEN amount ELSE -amount END AS amount,
           0 AS served
    FROM entries
    UNION ALL
    SELECT date_trunc($2, first_at, 'Asia/Tehran'), 0, 0, 1
    FROM firsts WHERE first_at >= $3::timestamptz
)
SELECT at, sum(transactions)::bigint AS transactions, sum(amount)::bigint AS amount,
       sum(served)::bigint AS served
FROM moves GROUP BY at ORDER BY at;

-- name: insight_activity
-- Per province, for tranche $1 (all of them when null): declined redemptions by reason (by
-- the store's province: a decline may name no household), reversals and their rials (by the
-- household's province), and net transactions and rials since $2 (the start of the day); of
-- the purchases forwarded from offline, those posted (by the household's province) and those
-- declined at posting, the stores' losses (by the store's province), with their rials.
WITH t AS (
    SELECT coalesce(min(starts_at), '-infinity') AS starts_at,
           coalesce(max(ends_at), 'infinity') AS ends_at
    FROM tranches WHERE $1::bigint IS NULL OR id = $1
), declines AS (
    SELECT m.province, r.reason, count(*) AS n
    FROM terminal_requests r
    JOIN terminals d ON d.id = r.terminal_id
    JOIN merchants m ON m.id = d.merchant_id, t
    WHERE r.kind = 'redemption' AND r.outcome = 'declined'
      AND r.created_at >= t.starts_at AND r.created_at < t.ends_at
    GROUP BY 1, 2
), offline_lost AS (
    SELECT m.province, count(*) AS n, sum(o.amount) AS amount
    FROM offline_purchases o
    JOIN terminal_requests r ON r.terminal_id = o.terminal_id AND r.request_id = o.request_id
    JOIN terminals d ON d.id = o.terminal_id
    JOIN merchants m ON m.id = d.merchant_id, t
    WHERE r.outcome = 'declined' AND o.posted_at >= t.starts_at AND o.posted_at < t.ends_at
    GROUP BY 1
), offline_posted AS (
    SELECT l.province, count(*) AS n, sum(l.amount) AS amount
    FROM ledger l
    WHERE l.captured_at IS NOT NULL AND ($1::bigint IS NULL OR l.tranche_id = $1)
    GROUP BY 1
), ledger_sums AS (
    SELECT l.province,
           count(*) FILTER (WHERE l.kind = 'reversal') AS reversals,
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'reversal'), 0) AS reversed_amount,
           coalesce(sum(CASE WHEN l.kind = 'redemption' THEN 1 ELSE -1 END)
                    FILTER (WHERE l.created_at >= $2), 0) AS today_transactions,
           coalesce(sum(CASE WHEN l.kind = 'redemption' THEN l.amount ELSE -l.amount END)
                    FILTER (WHERE l.created_at >= $2), 0) AS today_amount
    FROM ledger l
    WHERE ($1::bigint IS NULL OR l.tranche_id = $1)
      AND (l.kind = 'reversal' OR l.created_at >= $2)
    GROUP BY l.province
)
SELECT p.code,
       coalesce((SELECT jsonb_object_agg(d.reason, d.n) FROM declines d
                 WHERE d.province = p.code), '{}'::jsonb) AS declines,
       coalesce(s.reversals, 0)::bigint AS reversals,
       coalesce(s.reversed_amount, 0)::bigint AS reversed_amount,
       coalesce(s.today_transactions, 0)::bigint AS today_transactions,
       coalesce(s.today_amount, 0)::bigint AS today_amount,
       coalesce(op.n, 0)::bigint AS offline_posted,
       coalesce(op.amount, 0)::bigint AS offline_posted_amount,
       coalesce(ol.n, 0)::bigint AS offline_declined,
       coalesce(ol.amount, 0)::bigint AS offline_declined_amount,
       statement_timestamp() AS as_of
FROM provinces p
LEFT JOIN ledger_sums s ON s.province = p.code
LEFT JOIN offline_posted op ON op.province = p.code
LEFT JOIN offline_lost ol ON ol.province = p.code
ORDER BY p.code;

-- name: list_merchants
-- Stores and how many terminals each has, of one province ($1) and/or status ($2) when given.
SELECT m.id, m.name, m.province, m.category, m.status, count(t.id) AS terminals
FROM merchants m
LEFT JOIN terminals t ON t.merchant_id = m.id
WHERE ($1::text IS NULL OR m.province = $1) AND ($2::text IS NULL OR m.status = $2)
GROUP BY m.id
ORDER BY m.id;

-- name: list_terminals
-- POS terminals (never their secrets) with their store, of one store ($1) when given.
SELECT t.id, t.merchant_id, m.name AS merchant_name, m.province, t.status, t.offline_enabled
FROM terminals t
JOIN merchants m ON m.id = t.merchant_id
WHERE $1::bigint IS NULL OR t.merchant_id = $1
ORDER BY t.id;

-- name: wal_position
-- The primary's WAL position now, as a number: reads.py compares standbys against it.
SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint;

-- name: replay_position
-- Whether this server is a standby, and how far it has replayed the primary's WAL.
SELECT pg_is_in_recovery() AS standby,
       coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0) AS replayed;

-- name: server_role
-- What /healthz says the database is.
SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END;

-- name: inspection_seq_window
-- The seqs between which every ledger row created in Asia/Tehran days [$1, $2) lies, widened by
-- $3 seconds on each side (the far-apart look-around). created_at is the writing
-- transaction's start, so seq follows it only roughly; a row created 10 minutes before (after)
-- the window is seq-wise before (after) every row inside, as no ledger write lasts that long.
-- Two probes of ledger_created_at_idx.
SELECT coalesce((SELECT seq FROM ledger
                 WHERE created_at < ($1::date::timestamp AT TIME ZONE 'Asia/Tehran')
                                    - make_interval(secs => $3 + 600)
                 ORDER BY created_at DESC LIMIT 1), 0) AS lo,
       coalesce((SELECT seq FROM ledger
                 WHERE created_at >= ($2::date::timestamp AT TIME ZONE 'Asia/Tehran')
                                     + make_interval(secs => $3 + 600)
                 ORDER BY created_at LIMIT 1), 9223372036854775807) AS hi;

-- name: inspection_store_days
-- The inspection signals' raw figures per store and Asia/Tehran day, for the stores of province
-- $3 and/or the one store $4 (null: any), days [$1, $2), ledger seqs in ($5, $6)
-- (inspection_seq_window). Rules: opening hours [$7, $8) in minutes after Tehran midnight,
-- amounts that are multiples of $9 are round, a household's repeat at the same store within
-- $10 seconds is a split, a minute of at least greatest($11, $12 * the store's redemptions per
-- opening minute) redemptions is a burst, the same household at a store of another province
-- within $13 seconds is far apart. The store's rows are reached by its index
-- (merchant_id, seq) or the seq range; windows mark each row, one aggregate counts (no join of
-- per-store results, whose sizes the planner cannot guess); the per-row look-ups are key
-- probes.
WITH rows AS MATERIALIZED (
    SELECT l.seq, l.kind, l.merchant_id, l.terminal_id, l.request_id, l.national_id,
           l.province AS household_province, l.amount, l.created_at, m.province, m.category,
           m.name, (l.created_at AT TIME ZONE 'Asia/Tehran') AS local_at
    FROM merchants m
    JOIN ledger l ON l.merchant_id = m.id AND l.seq > $5 AND l.seq < $6
    WHERE ($3::text IS NULL OR m.province = $3) AND ($4::bigint IS NULL OR m.id = $4)
      AND l.created_at >= ($1::date::timestamp AT TIME ZONE 'Asia/Tehran')
      AND l.created_at < ($2::date::timestamp AT TIME ZONE 'Asia/Tehran')
),
marked AS (
    SELECT r.*, r.local_at::date AS day, date_trunc('minute', r.local_at) AS minute,
           lag(r.created_at) OVER (PARTITION BY r.merchant_id, r.kind, r.national_id
                                   ORDER BY r.created_at, r.seq) AS previous_at,
           count(*) OVER (PARTITION BY r.merchant_id, r.kind, r.local_at::date,
                                       date_trunc('minute', r.local_at)) AS in_minute,
           count(*) OVER (PARTITION BY r.merchant_id, r.kind, r.local_at::date) AS in_day
    FROM rows r
)
SELECT r.merchant_id, r.name, r.province, r.category, r.day,
       count(*) FILTER (WHERE r.kind = 'redemption') AS redemptions,
       count(DISTINCT r.terminal_id) FILTER (WHERE r.kind = 'redemption') AS terminals,
       count(DISTINCT r.national_id) FILTER (WHERE r.kind = 'redemption') AS households,
       coalesce(sum(r.amount) FILTER (WHERE r.kind = 'redemption'), 0)::bigint AS amount,
       count(*) FILTER (WHERE t.remaining = 0) AS emptied,
       count(*) FILTER (WHERE r.kind = 'redemption' AND r.household_province <> r.province)
           AS outside_province,
       count(*) FILTER (WHERE r.kind = 'redemption' AND r.amount % $9::bigint = 0)
           AS round_amounts,
       count(*) FILTER (
           WHERE r.kind = 'redemption'
             AND extract(hour FROM r.local_at) * 60 + extract(minute FROM r.local_at)
                 NOT BETWEEN $7::int AND $8::int - 1) AS after_hours,
       count(*) FILTER (
           WHERE r.kind = 'redemption'
             AND r.previous_at > r.created_at - make_interval(secs => $10::float8)) AS splits,
       count(*) FILTER (WHERE r.kind = 'redemption' AND EXISTS (
           SELECT FROM ledger o JOIN merchants om ON om.id = o.merchant_id
           WHERE o.national_id = r.national_id AND o.seq > $5 AND o.seq < $6
             AND o.kind = 'redemption' AND o.merchant_id <> r.merchant_id
             AND om.province <> r.province
             AND o.created_at BETWEEN r.created_at - make_interval(secs => $13::float8)
                                  AND r.created_at + make_interval(secs => $13::float8)))
           AS far_apart,
       coalesce(max(r.in_minute) FILTER (WHERE r.kind = 'redemption'), 0) AS peak_per_minute,
       count(DISTINCT r.minute) FILTER (WHERE r.kind = 'redemption' AND r.in_minute
           >= greatest($11::int, $12::float8 * r.in_day / ($8::int - $7::int))) AS burst_minutes,
       count(*) FILTER (WHERE r.kind = 'redemption' AND r.in_minute
           >= greatest($11::int, $12::float8 * r.in_day / ($8::int - $7::int)))
           AS burst_redemptions,
       count(*) FILTER (WHERE r.kind = 'reversal') AS reversals
FROM marked r
LEFT JOIN terminal_requests t
       ON r.kind = 'redemption' AND t.terminal_id = r.terminal_id AND t.request_id = r.request_id
GROUP BY r.day, r.merchant_id, r.name, r.province, r.category
ORDER BY r.day, r.merchant_id;

-- name: inspection_peer_volumes
-- Redemptions and terminals per store and Asia/Tehran day [$1, $2) of the stores of province
-- $3 and category $4, ledger seqs in ($5, $6): the peers a store's volume is compared with.
SELECT l.merchant_id, (l.created_at AT TIME ZONE 'Asia/Tehran')::date AS day,
       count(*) AS redemptions, count(DISTINCT l.terminal_id) AS terminals
FROM merchants m
JOIN ledger l ON l.merchant_id = m.id AND l.seq > $5 AND l.seq < $6
WHERE m.province = $3 AND m.category = $4 AND l.kind = 'redemption'
  AND l.created_at >= ($1::date::timestamp AT TIME ZONE 'Asia/Tehran')
  AND l.created_at < ($2::date::timestamp AT TIME ZONE 'Asia/Tehran')
GROUP BY 1, 2;

-- name: inspection_merchant
-- A store's province and category (none: no such store).
SELECT id, name, province, category FROM merchants WHERE id = $1;

-- name: inspection_rules
-- The newest version of the inspection rules (none: the built-in defaults apply), or version
-- $1 when given.
SELECT version, rules::text AS rules, note, created_by, created_at FROM inspection_rules
WHERE $1::integer IS NULL OR version = $1
ORDER BY version DESC LIMIT 1;

-- name: insert_inspection_rules
-- A new version of the inspection rules, given as JSON text (the next number; a concurrent
-- writer of the same number fails on the primary key).
INSERT INTO inspection_rules (version, rules, note, created_by)
SELECT coalesce(max(version), 0) + 1, $1::text::jsonb, $2, $3 FROM inspection_rules
RETURNING version, rules::text AS rules, note, created_by, created_at;

-- name: inspection_day_ranking
-- The ranking of a closed province-day computed earlier under these rules, if any.
SELECT ranking FROM inspection_days WHERE day = $1 AND province = $2 AND params = $3;

-- name: save_inspection_day_ranking
-- Keep the ranking of a closed province-day (a concurrent request may have kept it first).
INSERT INTO inspection_days (day, province, params, ranking) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING;

-- name: try_inspection_keeper_lock
-- One process at a time computes the closed days' rankings ahead of the auditors (a session
-- lock, released by inspection_keeper_unlock, or by the connection's end).
SELECT pg_try_advisory_lock(7365626, 5);

-- name: inspection_keeper_unlock
SELECT pg_advisory_unlock(7365626, 5);

-- name: inspection_days_kept
-- The provinces ('*': every province) whose ranking of a day is kept under these rules.
SELECT province FROM inspection_days WHERE day = $1 AND params = $2;
