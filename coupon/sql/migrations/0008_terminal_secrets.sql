-- Terminal secrets encrypted under a key outside the database, rotated with an overlap, and
-- hidden from auditors. The service encrypts the plain-text secrets when it starts.

ALTER TABLE terminals
    ALTER COLUMN secret DROP NOT NULL,
    ADD COLUMN secret_box bytea,
    ADD COLUMN previous_box bytea,
    ADD COLUMN previous_until timestamptz;
CREATE SEQUENCE terminal_key_changes_seq;
GRANT USAGE, SELECT ON SEQUENCE terminal_key_changes_seq TO coupon_writer;
REVOKE SELECT ON terminals FROM coupon_reader;
GRANT SELECT (id, merchant_id, status, created_at) ON terminals TO coupon_reader;
