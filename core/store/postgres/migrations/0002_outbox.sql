-- The outbox: every change that gives devices a new generation writes its
-- job in the change's own transaction, so an acknowledged change always
-- has its job, whichever core made it and whatever happens to that core
-- next. Any core claims a job (FOR UPDATE SKIP LOCKED, held while it
-- works, so a core that dies releases its jobs with its connection) and
-- deletes it in the same transaction when done: no job is lost, and one
-- is done twice only when its core died before committing.
--   device:  subject is a serial.
--   group:   subject is a group; its first claim splits it into members
--            jobs, so that every core shares a large group's work.
--   members: the members of group subject with after < serial <= upto.
CREATE TABLE jobs (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	kind       text NOT NULL CHECK (kind IN ('device', 'group', 'members')),
	subject    text NOT NULL,
	after      text NOT NULL DEFAULT '',
	upto       text NOT NULL DEFAULT '',
	attempts   integer NOT NULL DEFAULT 0,
	not_before timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_ready ON jobs (not_before, id);
