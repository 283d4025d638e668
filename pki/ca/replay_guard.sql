-- prov's guard on step-ca's PostgreSQL database: a one-time token is used
-- once, whichever step-ca instance on this database sees it first.
--
-- step-ca (smallstep/certificates v0.30.2, db.UseToken) records a used
-- token with smallstep/nosql v0.8.0's CmpAndSwap: SELECT … FOR UPDATE,
-- then INSERT … ON CONFLICT (nkey) DO UPDATE. Two transactions that
-- both find no row (there is nothing to lock yet) both insert; the second
-- waits for the first, meets its row and takes the DO UPDATE branch, and
-- both instances sign. A legitimate use never updates a row of used_ott
-- (the swap is from "no row"), so any UPDATE is a second use: refused
-- here, the second transaction rolls back and its step-ca answers 500
-- without signing. step-ca's own CREATE TABLE IF NOT EXISTS leaves the
-- trigger in place; pg_dump carries it.
BEGIN;
CREATE TABLE IF NOT EXISTS used_ott (nkey BYTEA CHECK (octet_length(nkey) <= 255), nvalue BYTEA, PRIMARY KEY (nkey));
CREATE OR REPLACE FUNCTION prov_used_ott_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'one-time token already used (prov_used_ott_once)' USING ERRCODE = 'unique_violation';
END
$$;
DROP TRIGGER IF EXISTS prov_used_ott_once ON used_ott;
CREATE TRIGGER prov_used_ott_once BEFORE UPDATE ON used_ott FOR EACH ROW EXECUTE FUNCTION prov_used_ott_once();
COMMIT;
