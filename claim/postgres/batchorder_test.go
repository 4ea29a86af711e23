package postgres

import (
	"errors"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
)

// TestCommitReleaseManyChunksInKeyOrder: CommitReleaseMany splits a
// batch into statements of at most chunkBytes of values (64 MiB by
// default), one pipeline, one transaction, in the order the caller gave
// the commits. Each statement locks its own rows in key order, but the
// chunks themselves are not: a batch [z, a] whose values fill a chunk
// each locks z, then a. TryClaimMany of [a, m, z] locks a, m, z, in key
// order, holding each row it tried (held or not) until it ends. So the
// two wait for each other (the claim holds a and waits for z, the commit
// holds z and waits for a): PostgreSQL's deadlock detector aborts one of
// them (40P01), and the documented "lock claim rows in key order so
// concurrent batches cannot deadlock" did not hold once values were large
// (found by review). The chunks go in key order now.
//
// The interleaving is forced by a third transaction that holds m's row
// until both batches wait.
func TestCommitReleaseManyChunksInKeyOrder(t *testing.T) {
	ctx := backendtest.Context(t)
	prefix := "rv" + randID() + "_"
	_, d := newClient(t, nil, "prefix", prefix)
	_, d2 := newClient(t, nil, "prefix", prefix)
	d.chunkBytes = 1 // every value fills a chunk, as 64 MiB values do

	var leases = map[string]driver.Lease{}
	for _, k := range []string{"a", "m", "z"} {
		l, err := d.TryClaim(ctx, k, "aaaaaaaaaaaaaaaaaaaaaaaa", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		leases[k] = l
	}

	// Hold m's claim row, so that the claim batch stops there holding a.
	tx, _ := openStatement(ctx, t, d, `SELECT 1 FROM `+prefix+`claims WHERE key = $1 FOR UPDATE`, d.keys.Encode("m"))

	claimed := make(chan error, 1)
	go func() {
		out, err := d2.TryClaimMany(ctx, []string{"a", "m", "z"},
			[]string{"bbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccc", "dddddddddddddddddddddddd"}, time.Minute)
		if err == nil {
			for _, c := range out {
				if c.Err != nil && !errors.As(c.Err, new(*driver.HeldError)) {
					err = errors.Join(err, c.Err)
				}
			}
		}
		claimed <- err
	}()
	awaitLockWait(ctx, t, d, "WITH req AS (SELECT * FROM unnest($1::text[], $2::text[])", prefix, claimed)

	committed := make(chan error, 1)
	go func() {
		errs, err := d.CommitReleaseMany(ctx, []driver.Commit{
			{Lease: leases["z"], Value: []byte("zz")},
			{Lease: leases["a"], Value: []byte("aa")},
		})
		if err == nil {
			err = errors.Join(errs...)
		}
		committed <- err
	}()
	awaitLockWait(ctx, t, d, "WITH req AS (SELECT * FROM unnest($1::text[], $2::bigint[]", prefix, committed)

	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wait := func(what string, ch <-chan error) {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s, concurrent with another batch: %v", what, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s hangs", what)
		}
	}
	wait("TryClaimMany", claimed)
	wait("CommitReleaseMany", committed)
}
