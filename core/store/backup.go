package store

import (
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"
)

// BackupInfo describes a backup before its bytes.
type BackupInfo struct {
	Size    int64
	Devices int
	Groups  int
}

// Backup writes a consistent copy of the whole store to w (one read
// transaction: writers go on meanwhile); before the first byte it tells
// start its size and contents. The copy is a bbolt file: restore it by
// putting it in place of the store's file while core is stopped.
func (s *Bolt) Backup(w io.Writer, start func(BackupInfo)) error {
	err := s.db.View(func(tx *bolt.Tx) error {
		info := BackupInfo{Size: tx.Size(), Devices: tx.Bucket(bucketDevices).Stats().KeyN, Groups: tx.Bucket(bucketGroups).Stats().KeyN}
		if start != nil {
			start(info)
		}
		_, err := tx.WriteTo(w)
		return err
	})
	if err != nil {
		return fmt.Errorf("store backup: %w", err)
	}
	return nil
}
