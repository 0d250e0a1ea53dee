package consullock_test

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/internal/testenv"
)

// recordHolder returns the session holding the record of k, or "".
func recordHolder(t *testing.T, client *api.Client, k string) string {
	t.Helper()
	pair, _, err := client.KV().Get(consullock.DefaultPrefix+"record/"+consullock.EscapeKey(k), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pair == nil {
		return ""
	}
	return pair.Session
}

func claim(t *testing.T, l *consullock.Locker, k string) lock.Lease {
	t.Helper()
	le, rec, err := l.Claim(t.Context(), k, 10*time.Second)
	if err != nil || le == nil || rec != nil {
		t.Fatalf("Claim(%q): (%v, %q, %v), want a lease", k, le, rec, err)
	}
	return le
}

// TestStoreRoundTrips counts the requests of Complete and of a replaying
// Claim. The pool's keeper creates lock sessions in the background (a
// spare replacing the one a take left the pool without, sent while a
// Complete may run), so a Complete's session creates are told apart by
// name: a Complete creates only retention sessions (retentionCreates).
func TestStoreRoundTrips(t *testing.T) {
	checkNoSessions(t)
	var seen *sessionLog
	l, c := newLockerWith(t, testenv.ConsulAddr(t), func(base http.RoundTripper) http.RoundTripper {
		seen = newSessionLog(base)
		return seen
	})
	k := key(t, "k")
	warm := claim(t, l, k)
	if err := warm.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the keeper creating a spare session", func() bool { return c.snapshot()["session/create"] >= 2 })
	complete := func(le lock.Lease, record string) (span, map[string]int) {
		t.Helper()
		before := c.snapshot()
		sp := span{start: time.Now()}
		if err := l.Complete(t.Context(), le, []byte(record), time.Minute); err != nil {
			t.Fatal(err)
		}
		sp.end = time.Now()
		return sp, diff(before, c.snapshot())
	}
	// The first Complete with a retention creates its retention session.
	first, d := complete(claim(t, l, k), "r")
	if n := len(retentionCreates(t, seen, first)); d["txn"] != 1 || n != 1 {
		t.Errorf("a first Complete made requests %v, %d of the creates retention sessions: want a retention session and one txn", d, n)
	}
	// Later ones with the same retention share it, for its width after
	// its create: one transaction.
	k2 := key(t, "k2")
	second, d := complete(claim(t, l, k2), "r2")
	if n := len(retentionCreates(t, seen, second)); d["txn"] != 1 || n != 0 {
		if width := consullock.RetentionWidth(l, time.Minute); d["txn"] == 1 && n == 1 && second.end.Sub(first.start) >= width {
			t.Logf("a warm Complete created a retention session %v after the first Complete began, the width of a retention session's sharing being %v: the test was too slow to tell, inconclusive", second.end.Sub(first.start), width)
		} else {
			t.Errorf("a warm Complete made requests %v, %d of the creates retention sessions: want one txn", d, n)
		}
	}
	// A claim of a completed key: the refused transaction and one read.
	before := c.snapshot()
	if le, rec, err := l.Claim(t.Context(), k2, 10*time.Second); err != nil || le != nil || string(rec) != "r2" {
		t.Fatalf("Claim of a completed key: (%v, %q, %v)", le, rec, err)
	}
	if d := diff(before, c.snapshot()); d["txn"] != 1 || d["kv"] != 1 {
		t.Errorf("a replaying Claim made requests %v, want one txn and one read", d)
	}
}

// retentionCreates returns the retention session creates seen sent within
// sp. The other creates it expects to be of lock sessions, sent by the
// pool's keeper, and logs them.
func retentionCreates(t *testing.T, seen *sessionLog, sp span) []created {
	t.Helper()
	var out []created
	for _, cr := range seen.createsIn(sp) {
		switch cr.name {
		case sessionName(t) + " retention":
			out = append(out, cr)
		case sessionName(t):
			t.Logf("a lock session create was sent %v into a Complete: the pool's keeper's", cr.sent.Sub(sp.start))
		default:
			t.Errorf("a create of a session named %q was sent %v into a Complete", cr.name, cr.sent.Sub(sp.start))
		}
	}
	return out
}

func TestRetentionSessions(t *testing.T) {
	checkNoSessions(t)
	client, _ := newClient(t)
	l, _ := newLocker(t)
	a, b, short1, short2 := key(t, "a"), key(t, "b"), key(t, "s1"), key(t, "s2")
	for _, k := range []string{a, b} {
		if err := l.Complete(t.Context(), claim(t, l, k), []byte(k), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	ra, rb := recordHolder(t, client, a), recordHolder(t, client, b)
	if ra == "" || ra != rb {
		t.Errorf("records with the same retention within its bucket: sessions %q and %q, want one shared", ra, rb)
	}
	s, _, err := client.Session().Info(ra, nil)
	if err != nil || s == nil || s.TTL != "1m7s" || s.Behavior != api.SessionBehaviorDelete || len(s.NodeChecks) != 0 || s.LockDelay != 0 {
		t.Errorf("retention session %+v, %v: want TTL 1m7s (retention + an eighth in whole seconds), behavior delete, no checks, no lock-delay", s, err)
	}
	if !strings.HasSuffix(s.Name, " retention") {
		t.Errorf("retention session named %q", s.Name)
	}
	// Under 8s a record gets a session of its own, with the retention as TTL.
	for _, k := range []string{short1, short2} {
		if err := l.Complete(t.Context(), claim(t, l, k), []byte(k), 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	r1, r2 := recordHolder(t, client, short1), recordHolder(t, client, short2)
	if r1 == "" || r1 == r2 {
		t.Errorf("records with a 2s retention: sessions %q and %q, want one each", r1, r2)
	}
	if s, _, err := client.Session().Info(r1, nil); err != nil || s == nil || s.TTL != "2s" {
		t.Errorf("2s retention session %+v, %v: want TTL 2s", s, err)
	}
	// Closing the Locker keeps the records.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	other, _ := newLocker(t)
	if le, rec, err := other.Claim(t.Context(), a, 10*time.Second); err != nil || le != nil || string(rec) != a {
		t.Errorf("Claim of a completed key after its Locker closed: (%v, %q, %v)", le, rec, err)
	}
}

func TestCompleteBadInput(t *testing.T) {
	checkNoSessions(t)
	noLeaks(t)
	l, _ := newLocker(t)
	other, _ := newLocker(t)
	k := key(t, "k")
	le := claim(t, l, k)

	big := make([]byte, consullock.DefaultMaxRecordSize+1)
	err := l.Complete(t.Context(), le, big, time.Minute)
	if !errors.Is(err, lock.ErrRecordTooLarge) || !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("Complete with a record over the limit: %v, want an error matching lock.ErrRecordTooLarge", err)
	}
	if err := l.Complete(t.Context(), le, nil, 25*time.Hour); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("Complete with 25h retention: %v, want ErrInvalidTTL", err)
	}
	if err := other.Complete(t.Context(), le, nil, time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("Complete on another Locker's lease: %v, want ErrInvalidArgument", err)
	}
	mem := memlock.New()
	ml, _ := mem.TryAcquire(t.Context(), k, time.Minute)
	if err := l.Complete(t.Context(), ml, nil, time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("Complete with a memlock lease: %v, want ErrInvalidArgument", err)
	}
	if _, _, err := other.Claim(t.Context(), k, 10*time.Second); !errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("after refused Completes the claim must still hold: %v", err)
	}
	// A record of exactly the limit goes through Consul's default limits.
	rec := bytes.Repeat([]byte{0xff, 0x00, 'x'}, consullock.DefaultMaxRecordSize/3+1)[:consullock.DefaultMaxRecordSize]
	if err := l.Complete(t.Context(), le, rec, time.Minute); err != nil {
		t.Fatalf("Complete with a %d-byte record: %v", len(rec), err)
	}
	if le2, got, err := other.Claim(t.Context(), k, 10*time.Second); err != nil || le2 != nil || !bytes.Equal(got, rec) {
		t.Errorf("Claim after a limit-size Complete: lease %v, %d bytes, %v", le2, len(got), err)
	}

	// Past Consul's own limit (txn_max_req_len 512 KiB) the server refuses:
	// an error, no panic, nothing stored, and the lease still holds.
	lax, _ := newLocker(t, consullock.WithMaxRecordSize(1<<20))
	k2 := key(t, "k2")
	le2, _, err := lax.Claim(t.Context(), k2, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := lax.Complete(t.Context(), le2, make([]byte, 600<<10), time.Minute); err == nil {
		t.Errorf("Complete with 600 KiB succeeded on an agent with default limits")
	}
	if _, _, err := other.Claim(t.Context(), k2, 10*time.Second); !errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("after a refused oversize Complete the claim must still hold: %v", err)
	}
	if err := le2.Refresh(t.Context(), 10*time.Second); err != nil {
		t.Errorf("Refresh after a refused oversize Complete: %v", err)
	}
	release(t, le2)

	// An empty record is a record.
	k3 := key(t, "k3")
	if err := l.Complete(t.Context(), claim(t, l, k3), nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	if le3, got, err := other.Claim(t.Context(), k3, 10*time.Second); err != nil || le3 != nil || got == nil || len(got) != 0 {
		t.Errorf("Claim of a key completed with an empty record: (%v, %q (nil: %v), %v), want a non-nil empty record", le3, got, got == nil, err)
	}
}

// TestClaimCompleteRace runs Claims against a Complete from several
// Lockers: every Claim either takes the key before the Complete, is
// refused while it is in progress, or sees the record; never a second
// lease after the Complete.
func TestClaimCompleteRace(t *testing.T) {
	checkNoSessions(t)
	var ls []*consullock.Locker
	for range 4 {
		l, _ := newLocker(t)
		ls = append(ls, l)
	}
	for round := range 5 {
		k := key(t, string(rune('a'+round)))
		first := claim(t, ls[0], k)
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			leases   int
			records  int
			problems []string
		)
		start := make(chan struct{})
		completed := make(chan struct{})
		for i := range 12 {
			wg.Go(func() {
				<-start
				if i%2 == 1 {
					<-completed
				}
				le, rec, err := ls[i%4].Claim(t.Context(), k, 10*time.Second)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && le != nil:
					leases++
					_ = le.Release(t.Context())
				case err == nil && string(rec) == "done":
					records++
				case errors.Is(err, lock.ErrNotAcquired):
				default:
					problems = append(problems, errString(err)+" / "+string(rec))
				}
			})
		}
		close(start)
		if err := ls[0].Complete(t.Context(), first, []byte("done"), time.Minute); err != nil {
			t.Fatal(err)
		}
		close(completed)
		wg.Wait()
		if leases != 0 || len(problems) > 0 || records < 6 {
			t.Errorf("round %d: %d Claims took a completed or claimed key, %d saw the record (want ≥ 6), problems %v", round, leases, records, problems)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
