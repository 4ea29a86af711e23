package mysql

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestEnqueueNeighbourKeys: Enqueue's compound statement
// locks the key's claim row and then, under REPEATABLE READ, scans the
// queue table's primary key (k, holder) for k = p_k (the DELETE of
// expired entries, the MAX(seq) subquery): that puts a gap lock on the
// gap that follows the key's last entry, up to the next key's first
// entry, and a next-key lock on the key's first entry covering the gap
// before it. Two Enqueues of two different, neighbouring keys, each with
// a waiter queued, therefore share one gap, each holding a gap lock on it,
// and each then inserts its own entry into it: InnoDB makes both wait for
// each other (a deadlock, or a lock-wait timeout). Distinct keys must
// never block each other, let alone fail.
//
// The interleaving is forced with a third transaction that holds a gap
// lock on the shared gap until both Enqueues wait for it, then lets go.
func TestEnqueueNeighbourKeys(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	c := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "nbq_", "sweep", "0"))
	ctx := backendtest.Context(t)
	b := c.Driver().(*backend)
	root := rootDB(t, srv)

	k1, k2 := "nb-qa", "nb-qb" // neighbours in the queue's primary key
	enc1 := b.keys.Encode(k1)
	mid := strings.Repeat("8", 24)
	for _, k := range []string{k1, k2} {
		if _, err := b.TryClaim(ctx, k, lease1, time.Minute); err != nil {
			t.Fatal(err)
		}
		// One waiter queued on each key: (k1, 888…) and (k2, 888…).
		if _, err := b.Enqueue(ctx, k, mid, time.Minute); !errors.As(err, new(*driver.HeldError)) {
			t.Fatalf("Enqueue %s: %v, want queued", k, err)
		}
	}

	// Hold a gap lock on the gap between (k1, 888…) and (k2, 888…).
	tx, err := root.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT * FROM `+b.q.queue+` WHERE k = ? AND holder = ? FOR UPDATE`, enc1, strings.Repeat("c", 24)); err != nil {
		t.Fatal(err)
	}

	errs := make(chan error, 2)
	enqueue := func(key, holder string) {
		_, err := b.Enqueue(ctx, key, holder, time.Minute)
		if errors.As(err, new(*driver.HeldError)) {
			err = nil // queued, as expected: the key is held
		}
		errs <- err
	}
	// k1's new waiter sorts after its existing one, k2's before its own:
	// both entries go into the shared gap.
	go enqueue(k1, strings.Repeat("f", 24))
	waitLockWaits(ctx, t, root, 1)
	go enqueue(k2, strings.Repeat("0", 24))
	waitLockWaits(ctx, t, root, 2)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("Enqueue of one key failed because of another key's Enqueue: %v", err)
		}
	}
}

// waitLockWaits returns once n transactions wait for a lock.
func waitLockWaits(ctx context.Context, t *testing.T, db *sql.DB, n int) {
	t.Helper()
	for {
		var got int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d transactions waiting for a lock, want %d", got, n)
		case <-time.After(150 * time.Millisecond): // INNODB_TRX is a cache refreshed when read 0.1 s after its last read
		}
	}
}
