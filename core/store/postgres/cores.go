package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ErrNotAlone is a core that must be the only one on its database
// (Options.SingleCore) finding another, or a shared one finding such a
// core there.
var ErrNotAlone = errors.New("another core uses this database")

// coresLock is the advisory lock every core holds on its database while
// it runs: shared by cores that share it, exclusive by a single core
// ("core" in ASCII).
const coresLock = 0x636f7265

// holdCoresLock takes the cores' lock on a connection of its own, held
// until Close: exclusive for a single core, shared otherwise. It is a
// check at start, against a misconfigured second core; a lock lost with
// its connection while the database is away is not taken again.
func (s *Store) holdCoresLock(ctx context.Context, single bool) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	fn := "pg_try_advisory_lock_shared"
	if single {
		fn = "pg_try_advisory_lock"
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT "+fn+"($1)", coresLock).Scan(&ok); err != nil {
		_ = conn.Close(ctx)
		return err
	}
	if !ok {
		_ = conn.Close(ctx)
		if single {
			return fmt.Errorf("%w: store.singleCore is set, yet another core runs on it", ErrNotAlone)
		}
		return fmt.Errorf("%w: a core with store.singleCore (and its embedded broker) runs on it", ErrNotAlone)
	}
	s.lockConn = conn
	return nil
}
