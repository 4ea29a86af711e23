package postgres

import (
	"context"
	"testing"
	"time"
)

// A TryClaimRead that waits for the claim row lock of a CommitRelease
// still in progress, and wins the claim when it commits, returns the value
// that CommitRelease wrote, although that value is not in the snapshot the
// claim statement started with.
func TestClaimReadSeesReleaseDuringWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "fp" + randID() + "_"
	params := "prefix=" + prefix
	a, ad := newClient(t, params, nil)
	b, _ := newClient(t, params, nil)
	l, err := a.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// a's CommitRelease, held open in a transaction.
	tx, err := ad.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	enc := ad.keys.Encode("k")
	tag, err := tx.Exec(ctx, ad.q.commitRelease, enc, []byte("committed"), int64(0), int64(l.Token), l.Holder, ad.channel, keyPayload(enc))
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("commit-release in a transaction: %v, %v", tag, err)
	}
	type res struct {
		v     []byte
		found bool
		err   error
	}
	done := make(chan res, 1)
	go func() {
		l, v, found, err := b.TryClaimRead(ctx, "k", time.Minute)
		if err == nil {
			_ = b.Release(context.Background(), l)
		}
		done <- res{v, found, err}
	}()
	// Wait until the claim statement is blocked on the row lock.
	for {
		var n int
		err := ad.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND query LIKE 'WITH snap AS%' AND strpos(query, $1) > 0`, prefix+"claims").Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("TryClaimRead did not wait for the row lock: %q, %v, %v", r.v, r.found, r.err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || !r.found || string(r.v) != "committed" {
		t.Fatalf("TryClaimRead after a concurrent CommitRelease: %q, found %v, %v; want the committed value", r.v, r.found, r.err)
	}
}
