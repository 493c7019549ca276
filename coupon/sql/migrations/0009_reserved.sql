-- Placeholder: version 0009 is taken by another branch (inspection tables, token province
-- scope); that branch's 0009 replaces this file when the two are merged.
SELECT 1;
