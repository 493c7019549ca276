-- Each sealed block's head signed with an Ed25519 key kept outside the database.

CREATE TABLE ledger_block_signatures (
    block_no  bigint PRIMARY KEY,
    signer    bytea NOT NULL
        CONSTRAINT ledger_block_signatures_signer_check CHECK (octet_length(signer) = 32),
    signature bytea NOT NULL
        CONSTRAINT ledger_block_signatures_signature_check CHECK (octet_length(signature) = 64),
    signed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER ledger_block_signatures_append_only BEFORE UPDATE OR DELETE
    ON ledger_block_signatures FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_block_signatures_no_truncate BEFORE TRUNCATE
    ON ledger_block_signatures FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
GRANT SELECT ON ledger_block_signatures TO coupon_reader;
GRANT SELECT, INSERT ON ledger_block_signatures TO coupon_writer;
