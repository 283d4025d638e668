-- Admissions: the quota of each batch and the enrollment in progress of
-- each serial, shared by every proxy and every core replica
-- (store.DecideAdmission). A batch's row is locked by every admission in
-- it, so its places are counted one decision at a time; a serial has at
-- most one reservation (its primary key), taken or shared in one
-- INSERT … ON CONFLICT.
CREATE TABLE batches (
	name text PRIMARY KEY
);

-- Serials counted in a batch for good (enrolled).
CREATE TABLE batch_members (
	batch  text NOT NULL REFERENCES batches (name),
	serial text NOT NULL,
	PRIMARY KEY (batch, serial)
);

-- A serial's place while it is being enrolled, until expires (a lease).
CREATE TABLE admissions (
	serial     text PRIMARY KEY,
	batch      text NOT NULL DEFAULT '',
	key_sha256 text NOT NULL,
	proxy      text NOT NULL,
	holders    integer NOT NULL CHECK (holders > 0),
	expires    timestamptz NOT NULL
);
CREATE INDEX admissions_by_batch ON admissions (batch, expires);
