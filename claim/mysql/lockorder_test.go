package mysql

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestClaimReadLockOrder: a claim-and-read that waits for a claim row
// while CommitRelease holds it must not hold anything CommitRelease needs
// next. The test plays CommitRelease's transaction by hand (release the
// claim row, then write the value), starts a TryClaimRead of the key from
// the driver between the two statements, waits until InnoDB reports that
// claim waiting for the row lock, then writes the value and commits: the
// claim must then get the lease and the value just written, and nobody
// may be a deadlock victim. (When the claim's value subquery named the key
// as a constant, MariaDB read the value first, share-locking its gap, and
// the write below deadlocked every time: 2 loads per key in a herd.)
func TestClaimReadLockOrder(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	c := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "lockorder_", "sweep", "0"))
	ctx := backendtest.Context(t)
	b := c.Driver().(*backend)
	root := rootDB(t, srv)
	key := "lock-order " + t.Name()
	enc := b.keys.Encode(key)
	held, err := b.TryClaim(ctx, key, lease1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	tx, err := root.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE `+b.q.claims+` SET holder = NULL, expires = `+nowUS+`, ev = ev + 1 WHERE k = ? AND token = ?`, enc, held.Token); err != nil {
		t.Fatal(err)
	}

	type claimed struct {
		val []byte
		ok  bool
		err error
	}
	done := make(chan claimed, 1)
	go func() {
		_, v, ok, err := b.TryClaimRead(ctx, key, lease2, time.Minute)
		done <- claimed{v, ok, err}
	}()
	waitLockWait(ctx, t, root)

	if _, err := tx.ExecContext(ctx, `INSERT INTO `+b.q.values+` (k, v, expires) VALUES (?, ?, NULL)`, enc, []byte("committed")); err != nil {
		t.Fatalf("the value's write, while a claim waits for the row: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	got := <-done
	if got.err != nil {
		t.Fatalf("TryClaimRead: %v", got.err)
	}
	if !got.ok || string(got.val) != "committed" {
		t.Fatalf("TryClaimRead read %q (found %v), want the value committed with the release", got.val, got.ok)
	}
}

// waitLockWait returns once some transaction on the server waits for a
// row lock (INNODB_TRX needs PROCESS: the test server's user has every
// privilege).
func waitLockWait(ctx context.Context, t *testing.T, db *sql.DB) {
	t.Helper()
	for {
		var n int
		err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("no claim waited for the claim row's lock")
		case <-time.After(150 * time.Millisecond):
			// InnoDB refreshes INNODB_TRX's cache only after 0.1 s
			// (INNODB_TRX_CACHE), so a tighter loop could read the
			// same stale rows for as long as it ran.
		}
	}
}
