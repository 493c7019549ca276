-- Province-scoped operator and auditor tokens, store categories, and the inspection rules.

-- A token with a province acts only on that province's stores, terminals and households; none
-- (null) is national.
ALTER TABLE api_tokens
    ADD COLUMN province text CONSTRAINT api_tokens_province_fkey REFERENCES provinces (code);

-- What kind of store: inspection compares a store with those of its province and category.
ALTER TABLE merchants
    ADD COLUMN category text NOT NULL DEFAULT 'grocery'
        CONSTRAINT merchants_category_check CHECK (category IN (
            'grocery', 'supermarket', 'chain_store', 'butcher', 'dairy_shop', 'bakery'));
CREATE INDEX merchants_province_idx ON merchants (province, category);

-- The thresholds and weights of the inspection signals, one row per version; the newest
-- applies. Never updated: a change is a new version.
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

GRANT SELECT ON inspection_rules, inspection_days TO coupon_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON inspection_days TO coupon_writer;
GRANT SELECT, INSERT ON inspection_rules TO coupon_writer;
