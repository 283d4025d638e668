-- Reports and rollouts (issue 16).
--
-- A device's latest report of what it runs (store.NextReport): one row
-- per device, replaced by each report; transitions go to the audit trail.
CREATE TABLE device_reports (
	serial text PRIMARY KEY REFERENCES devices (serial),
	record bytea NOT NULL
);

-- A rollout holds members at the group version they had (held_at) while
-- the group's data is already the new one; a held device is read with
-- that version's record, kept in group_versions (store/rollouts.go).
ALTER TABLE devices ADD COLUMN held_at bigint;
CREATE INDEX devices_held ON devices (group_name, serial) WHERE held_at IS NOT NULL;

CREATE TABLE group_versions (
	group_name text NOT NULL REFERENCES groups (name),
	version    bigint NOT NULL,
	record     bytea NOT NULL,
	PRIMARY KEY (group_name, version)
);

-- At most one active rollout per group, by constraint.
CREATE SEQUENCE rollout_ids;
CREATE TABLE rollouts (
	id         bigint PRIMARY KEY,
	group_name text NOT NULL REFERENCES groups (name),
	active     boolean NOT NULL,
	rev        bigint NOT NULL,
	record     bytea NOT NULL
);
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (group_name) WHERE active;

-- Which members each wave released.
CREATE TABLE rollout_members (
	rollout bigint NOT NULL REFERENCES rollouts (id),
	wave    integer NOT NULL,
	serial  text NOT NULL REFERENCES devices (serial),
	PRIMARY KEY (rollout, wave, serial)
);
