-- The registry. Records are the store's compact encoding (compressed JSON,
-- store.EncodeRecord) in bytea; the columns beside them are what
-- constraints, If-Match checks and lookups need.
CREATE TABLE groups (
	name    text PRIMARY KEY,
	version bigint NOT NULL,
	record  bytea NOT NULL
);

CREATE TABLE devices (
	serial       text PRIMARY KEY,             -- one serial, one device
	hardware_key text NOT NULL UNIQUE,         -- one hardware ID, one device
	group_name   text NOT NULL REFERENCES groups (name),
	version      bigint NOT NULL,              -- the device's own version (If-Match)
	rev          bigint NOT NULL DEFAULT 1,    -- every write of the row
	record       bytea NOT NULL
);
CREATE INDEX devices_by_group ON devices (group_name, serial);

-- The audit trail. seq orders one subject's events: every event of a
-- device is written after its row is locked, so within a subject seq
-- order is commit order.
CREATE TABLE audit (
	seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	subject text NOT NULL,
	event   bytea NOT NULL
);
CREATE INDEX audit_by_subject ON audit (subject, seq);

CREATE TABLE ca_revocations (
	device       text NOT NULL,
	cert_serial  text NOT NULL,
	reason       text NOT NULL,
	since        timestamptz NOT NULL,
	attempts     integer NOT NULL DEFAULT 0,
	last_error   text NOT NULL DEFAULT '',
	next_attempt timestamptz NOT NULL,
	PRIMARY KEY (device, cert_serial)
);
