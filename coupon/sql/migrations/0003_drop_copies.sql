-- Copies removed. The national-id rule has one SQL home: the checksum on national_id_number().
DROP FUNCTION national_id_is_valid(text);

-- Terminals call redeem_many(); a batch of one needs no function of its own.
DROP FUNCTION redeem(bigint, text, text, bytea, text, bigint, text[], boolean, integer);
