package etcdlock_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/idempotency"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var _ idempotency.Store = (*etcdlock.Locker)(nil)

// recordLease returns the etcd lease the record of key is bound to.
func recordLease(t *testing.T, cli *clientv3.Client, prefix, key string) int64 {
	t.Helper()
	resp, err := cli.Get(t.Context(), prefix+"r/"+key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("no record for %q", key)
	}
	return resp.Kvs[0].Lease
}

// TestRetentionLeasesShared checks that records completed close together
// with the same retention share one retention lease, and that lock keys are
// gone once completed.
func TestRetentionLeasesShared(t *testing.T) {
	var c counter
	cli := newClient(t, &c)
	prefix := testPrefix(t)
	s := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = s.Close() })
	ctx := t.Context()
	complete := func(key string, retention time.Duration) {
		t.Helper()
		le, rec, err := s.Claim(ctx, key, 10*time.Second)
		if err != nil || rec != nil {
			t.Fatalf("Claim(%q): %v, %d-byte record", key, err, len(rec))
		}
		if err := s.Complete(ctx, le, []byte(key), retention); err != nil {
			t.Fatal(err)
		}
		if resp := rawLock(t, cli, prefix, key); len(resp.Kvs) != 0 {
			t.Errorf("lock key of %q still exists after Complete", key)
		}
	}
	complete("a", time.Hour)
	grants := c.method("LeaseGrant")
	txns := c.method("Txn")
	complete("b", time.Hour)
	complete("c", 2*time.Hour)
	if recordLease(t, cli, prefix, "a") != recordLease(t, cli, prefix, "b") {
		t.Error("records with the same retention completed a moment apart use different leases")
	}
	if recordLease(t, cli, prefix, "a") == recordLease(t, cli, prefix, "c") {
		t.Error("records with retentions of 1 h and 2 h share a lease")
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(recordLease(t, cli, prefix, "a")))
	if err != nil {
		t.Fatal(err)
	}
	bucket := time.Hour / 16
	if got := time.Duration(ttl.GrantedTTL) * time.Second; got < time.Hour || got > time.Hour+bucket+time.Second {
		t.Errorf("retention lease of a 1 h record granted %v, want between 1 h and 1 h + the bucket %v", got, bucket)
	}
	// Only c's retention needed a grant, besides lock lease refills.
	if n := c.method("Txn") - txns; n != 4 {
		t.Errorf("two Claim+Complete pairs made %d transactions, want 4", n)
	}
	if n := c.method("LeaseGrant") - grants; n > 3 {
		t.Errorf("two Claim+Complete pairs granted %d leases, want at most one retention lease and two lock lease refills", n)
	}
}

// TestRecordSizeLimit checks the record limit: at the limit a record is
// stored and replayed byte for byte; above it Complete refuses it and the
// lease still holds.
func TestRecordSizeLimit(t *testing.T) {
	prefix := testPrefix(t)
	s := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	other := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	ctx := t.Context()
	le, _, err := s.Claim(ctx, "big", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tooBig := make([]byte, etcdlock.DefaultMaxRecordSize+1)
	err = s.Complete(ctx, le, tooBig, time.Minute)
	if !errors.Is(err, etcdlock.ErrRecordTooLarge) || !errors.Is(err, lock.ErrInvalidArgument) {
		t.Fatalf("Complete with %d bytes: %v, want ErrRecordTooLarge matching ErrInvalidArgument", len(tooBig), err)
	}
	if _, _, err := other.Claim(ctx, "big", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("after a refused Complete the lease must still hold; Claim gave %v", err)
	}
	max := tooBig[:etcdlock.DefaultMaxRecordSize]
	for i := range max {
		max[i] = byte(i % 251)
	}
	if err := s.Complete(ctx, le, max, time.Minute); err != nil {
		t.Fatalf("Complete with a record at the limit: %v", err)
	}
	got, rec, err := other.Claim(ctx, "big", time.Minute)
	if err != nil || got != nil || !bytes.Equal(rec, max) {
		t.Fatalf("Claim of a completed key: lease %v, %d bytes, %v; want the %d-byte record", got, len(rec), err, len(max))
	}
}

// TestClaimDuringComplete races Claims on other Lockers against Complete:
// every Claim sees either the claim in progress or the record, never a free
// key.
func TestClaimDuringComplete(t *testing.T) {
	prefix := testPrefix(t)
	owner := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	others := []*etcdlock.Locker{newLocker(t, nil, etcdlock.WithPrefix(prefix)), newLocker(t, nil, etcdlock.WithPrefix(prefix))}
	ctx := t.Context()
	for round := range 5 {
		key := "k" + string(rune('0'+round))
		le, _, err := owner.Claim(ctx, key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var (
			wg       sync.WaitGroup
			stop     = make(chan struct{})
			mu       sync.Mutex
			bad      []string
			sawRec   bool
			attempts int
		)
		for _, o := range others {
			for range 3 {
				wg.Go(func() {
					for {
						got, rec, err := o.Claim(ctx, key, time.Minute)
						mu.Lock()
						attempts++
						switch {
						case got != nil:
							bad = append(bad, "a Claim took the key")
							_ = got.Release(ctx)
						case err == nil && !bytes.Equal(rec, []byte("done")):
							bad = append(bad, "a Claim returned a wrong record")
						case err == nil:
							sawRec = true
						case !errors.Is(err, lock.ErrNotAcquired):
							bad = append(bad, err.Error())
						}
						done := sawRec
						mu.Unlock()
						select {
						case <-stop:
							if done {
								return
							}
						default:
						}
					}
				})
			}
		}
		time.Sleep(10 * time.Millisecond) // let the Claims run against the claimed key
		if err := owner.Complete(ctx, le, []byte("done"), time.Minute); err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		if len(bad) > 0 {
			t.Fatalf("round %d: %s (of %d attempts)", round, bad[0], attempts)
		}
	}
}

// TestMalformedRecord checks that a record key written by something else
// gives Claim an error, not a lease or garbage.
func TestMalformedRecord(t *testing.T) {
	cli := newClient(t, nil)
	prefix := testPrefix(t)
	s := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = s.Close() })
	ctx := t.Context()
	if _, err := cli.Put(ctx, prefix+"r/k", "not a record"); err != nil {
		t.Fatal(err)
	}
	le, rec, err := s.Claim(ctx, "k", time.Minute)
	if err == nil || le != nil || rec != nil {
		t.Fatalf("Claim over a malformed record: (%v, %q, %v), want an error only", le, rec, err)
	}
}
