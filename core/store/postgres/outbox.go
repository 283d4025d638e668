package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"

	"github.com/fleetprov/prov/core/store"
)

var _ store.Outbox = (*Store)(nil)

// jobsChannel is the channel a transaction that writes jobs notifies: a
// wake-up only, since a listener misses what is sent while it reconnects.
const jobsChannel = "prov_jobs"

// membersPerJob is how many members of a group one job covers: small
// enough that every core gets a share of a large group, large enough that
// a claim's transaction is not most of the work.
const membersPerJob = 256

// retryDelay is when a failed job is tried again: 2^attempts seconds, at
// most five minutes.
func retryDelay(attempts int) time.Duration {
	return min(time.Second<<min(attempts, 9), 5*time.Minute)
}

// enqueue writes a device's job, in tx. It notifies no one: the core that
// made the change wakes its own claimers (store.Outbox), and a NOTIFY
// would cost every such commit PostgreSQL's global lock on the notify
// queue, held through the commit's WAL flush, so that concurrent commits
// could no longer share one flush (measured: registrations at 64 clients
// with fsync on, 763/s with it).
func enqueue(ctx context.Context, tx pgx.Tx, kind, subject string) error {
	_, err := tx.Exec(ctx, "INSERT INTO jobs (kind, subject) VALUES ($1, $2)", kind, subject)
	return err
}

// enqueueShared writes a group's job and notifies every core's listener:
// a group's members are every core's work.
func enqueueShared(ctx context.Context, tx pgx.Tx, kind, subject string) error {
	_, err := tx.Exec(ctx, `WITH j AS (INSERT INTO jobs (kind, subject) VALUES ($1, $2)) SELECT pg_notify('`+jobsChannel+`', '')`, kind, subject)
	return err
}

// claimed is a job held by this transaction; after and upto bound a
// members job's serials.
type claimed struct {
	*store.Job
	after, upto string
}

// ClaimJobs claims the oldest ready job and, when it is a device's, up to
// limit-1 more; a group's job is split into members jobs instead (other
// cores are notified, so they share them).
func (s *Store) ClaimJobs(ctx context.Context, limit int, do func(ctx context.Context, j *store.Job) error) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		n = 0
		jobs, err := claim(ctx, tx, "", 1, 0)
		if err != nil || len(jobs) == 0 {
			return err
		}
		switch j := jobs[0]; j.Kind {
		case "group":
			n = 1
			return split(ctx, tx, j)
		case store.JobDevice:
			more, err := claim(ctx, tx, store.JobDevice, limit-1, jobs[0].ID)
			if err != nil {
				return err
			}
			jobs = append(jobs, more...)
		}
		n = len(jobs)
		if err := readDevices(ctx, tx, jobs); err != nil {
			return err
		}
		var done []int64
		for _, j := range jobs {
			if err := do(ctx, j.Job); err != nil {
				if _, err := tx.Exec(ctx, "UPDATE jobs SET attempts = attempts + 1, not_before = now() + make_interval(secs => $2) WHERE id = $1",
					j.ID, retryDelay(j.Attempts).Seconds()); err != nil {
					return err
				}
				continue
			}
			done = append(done, j.ID)
		}
		_, err = tx.Exec(ctx, "DELETE FROM jobs WHERE id = ANY($1)", done)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("claim jobs: %w", classify(err))
	}
	return n, nil
}

// claim locks up to limit ready jobs (of kind, if not "") no one holds,
// but not job held, which this transaction holds already (SKIP LOCKED
// skips only what others hold).
func claim(ctx context.Context, tx pgx.Tx, kind string, limit int, held int64) ([]claimed, error) {
	if limit <= 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, `SELECT id, kind, subject, after, upto, attempts FROM jobs
		WHERE not_before <= now() AND ($1 = '' OR kind = $1) AND id <> $3 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED`, kind, limit, held)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
		c := claimed{Job: &store.Job{}}
		var attempts int32
		err := r.Scan(&c.ID, &c.Kind, &c.Subject, &c.after, &c.upto, &attempts)
		c.Attempts = int(attempts)
		return c, err
	})
}

// split replaces a group's job by members jobs of membersPerJob serials
// each, in serial order.
func split(ctx context.Context, tx pgx.Tx, j claimed) error {
	rows, err := tx.Query(ctx, "SELECT serial FROM devices WHERE group_name = $1 ORDER BY serial", j.Subject)
	if err != nil {
		return err
	}
	serials, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	var after, upto []string
	for i := 0; i < len(serials); i += membersPerJob {
		a := ""
		if i > 0 {
			a = serials[i-1]
		}
		after = append(after, a)
		upto = append(upto, serials[min(i+membersPerJob, len(serials))-1])
	}
	if _, err := tx.Exec(ctx, `INSERT INTO jobs (kind, subject, after, upto)
		SELECT 'members', $1, a, u FROM unnest($2::text[], $3::text[]) AS r(a, u)`, j.Subject, after, upto); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "WITH d AS (DELETE FROM jobs WHERE id = $1) SELECT pg_notify('"+jobsChannel+"', '')", j.ID)
	return err
}

// readDevices reads the devices of the claimed jobs, with their groups.
func readDevices(ctx context.Context, tx pgx.Tx, jobs []claimed) error {
	bySerial := map[string]*store.Job{}
	var serials []string
	for _, j := range jobs {
		if j.Kind == store.JobDevice {
			bySerial[j.Subject] = j.Job
			serials = append(serials, j.Subject)
		}
	}
	if len(serials) > 0 {
		if err := scanViews(ctx, tx, func(v *store.View) { bySerial[v.Serial].Devices = append(bySerial[v.Serial].Devices, *v) },
			"SELECT d.serial, "+viewColumns+" FROM "+viewFrom+" WHERE d.serial = ANY($1)", serials); err != nil {
			return err
		}
	}
	for _, j := range jobs {
		if j.Kind != store.JobMembers {
			continue
		}
		if err := scanViews(ctx, tx, func(v *store.View) { j.Devices = append(j.Devices, *v) },
			"SELECT d.serial, "+viewColumns+" FROM "+viewFrom+" WHERE d.group_name = $1 AND d.serial > $2 AND d.serial <= $3 ORDER BY d.serial",
			j.Subject, j.after, j.upto); err != nil {
			return err
		}
	}
	return nil
}

func scanViews(ctx context.Context, q querier, fn func(*store.View), sql string, args ...any) error {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var serial string
		var draw, graw []byte
		var held int
		if err := rows.Scan(&serial, &draw, &graw, &held); err != nil {
			return err
		}
		v, err := decodeView(serial, draw, graw, held)
		if err != nil {
			return err
		}
		fn(v)
	}
	return rows.Err()
}

// ListenJobs listens on the jobs' channel on a connection of its own
// (pgxlisten: it reconnects after a second, and the backlog handler,
// called after every LISTEN, is the wake-up that covers what was missed).
func (s *Store) ListenJobs(ctx context.Context, wake func(), onError func(error)) error {
	l := &pgxlisten.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
		},
		LogError: func(_ context.Context, err error) {
			if ctx.Err() == nil {
				onError(fmt.Errorf("listen for jobs: %w", classify(err)))
			}
		},
		ReconnectDelay: time.Second,
	}
	l.Handle(jobsChannel, wakeHandler(wake))
	if err := l.Listen(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// wakeHandler wakes on a notification and after every (re)connection.
type wakeHandler func()

func (w wakeHandler) HandleNotification(context.Context, *pgconn.Notification, *pgx.Conn) error {
	w()
	return nil
}

func (w wakeHandler) HandleBacklog(context.Context, string, *pgx.Conn) error {
	w()
	return nil
}
