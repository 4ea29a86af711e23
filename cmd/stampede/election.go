package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/coord"
)

// demoLease is the leader's lease in the election scenario: the bound on
// the failover after the leader's process dies.
const demoLease = time.Second

// election is the last scenario: three processes campaign for one
// leadership (coord.Election); the leader's process is killed (its client
// closed: no resignation, renewals stop) and another takes over with a
// higher term within one lease; every surviving process observed both
// terms, in order.
func (d *demo) election(ctx context.Context) error {
	const title = "Leader election: the leader's process dies; another leads within one lease, with a higher term"
	fmt.Fprintf(d.out, "\n%d. %s\n", len(d.rep.Scenarios)+1, title)
	name := d.name + "-scheduler"
	type candidate struct {
		name string
		c    *claim.Client
		e    *coord.Election
		obs  []uint64
	}
	var mu sync.Mutex
	cands := make([]*candidate, 3)
	octx, stopObserving := context.WithCancel(ctx)
	defer stopObserving()
	var observers sync.WaitGroup
	defer observers.Wait()
	for i := range cands {
		c, err := d.openBackend(ctx)
		if err != nil {
			return fmt.Errorf("demo: election: %w", err)
		}
		defer c.Close()
		e, err := coord.NewElection(c, name, &coord.ElectionOptions{TTL: demoLease})
		if err != nil {
			return err
		}
		cd := &candidate{name: string(rune('P' + i)), c: c, e: e}
		cands[i] = cd
		ch, err := e.Observe(octx)
		if err != nil {
			return fmt.Errorf("demo: election: %w", err)
		}
		observers.Go(func() {
			for l := range ch {
				if !l.Resigned {
					mu.Lock()
					cd.obs = append(cd.obs, l.Term)
					mu.Unlock()
				}
			}
		})
	}
	type won struct {
		cd *candidate
		ld *coord.Leadership
		at time.Time
	}
	wins := make(chan won, len(cands))
	cctx, stopCampaigns := context.WithCancel(ctx)
	defer stopCampaigns()
	var campaigns sync.WaitGroup
	defer campaigns.Wait()
	for _, cd := range cands {
		campaigns.Go(func() {
			ld, err := cd.e.Campaign(cctx, cd.name, []byte("process "+cd.name))
			if err == nil {
				wins <- won{cd, ld, time.Now()}
			}
		})
	}
	first := <-wins
	fmt.Fprintf(d.out, "  process %s leads, term %d; killing it (no resignation)\n", first.cd.name, first.ld.Term())
	killed := time.Now()
	first.cd.c.Close()
	next := <-wins
	failover := next.at.Sub(killed)
	fmt.Fprintf(d.out, "  process %s leads, term %d, %s after the kill (lease %s)\n", next.cd.name, next.ld.Term(), failover.Round(time.Millisecond), demoLease)
	rep := &electionReport{Processes: len(cands), LeaseMS: demoLease.Milliseconds(), First: first.cd.name, FirstTerm: first.ld.Term(),
		Next: next.cd.name, NextTerm: next.ld.Term(), FailoverMS: float64(failover.Microseconds()) / 1e3, Observed: map[string][]uint64{}}
	// Every surviving observer hears of the new term (pushed), then stop.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		all := true
		for _, cd := range cands {
			if cd != first.cd && (len(cd.obs) == 0 || cd.obs[len(cd.obs)-1] != next.ld.Term()) {
				all = false
			}
		}
		mu.Unlock()
		if all {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The campaigns still waiting give up before the leader resigns, so
	// no third term starts.
	stopCampaigns()
	campaigns.Wait()
	_ = next.ld.Resign(ctx)
	stopObserving()
	observers.Wait()
	for _, cd := range cands {
		if cd != first.cd {
			rep.Observed[cd.name] = cd.obs
			fmt.Fprintf(d.out, "  process %s observed terms %v\n", cd.name, cd.obs)
		}
	}
	d.rep.Scenarios = append(d.rep.Scenarios, scenario{Title: title, Election: rep})
	return nil
}
