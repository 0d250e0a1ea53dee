package etcdlock

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestCompleteRetriedAfterLostAnswer replays a Complete whose first answer
// was lost (the lease does not know it succeeded): the retry recognises its
// own record by the token and reports success, while a different holding's
// Complete still gets ErrNotHeld.
func TestCompleteRetriedAfterLostAnswer(t *testing.T) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: testenv.EtcdEndpoints(t), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	var b [6]byte
	_, _ = rand.Read(b[:])
	l, err := New(cli, WithPrefix("idemlock-test/"+hex.EncodeToString(b[:])+"/"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()

	ls, _, err := l.Claim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	le := ls.(*lease)
	if err := l.Complete(ctx, le, []byte("r"), time.Minute); err != nil {
		t.Fatal(err)
	}
	// As if the answer had been lost: the lease still thinks it holds.
	retry := newLease(l, le.Key(), le.lk, le.Token(), le.g, nil)
	if err := l.Complete(ctx, retry, []byte("r"), time.Minute); err != nil {
		t.Errorf("retried Complete of a stored record: %v, want success", err)
	}
	stranger := newLease(l, le.Key(), le.lk, le.Token()-1, le.g, nil)
	if err := l.Complete(ctx, stranger, []byte("x"), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Complete by another holding: %v, want ErrNotHeld", err)
	}
	if _, rec, err := l.Claim(ctx, "k", time.Minute); err != nil || string(rec) != "r" {
		t.Errorf("Claim after the retries: %q, %v; want the first record", rec, err)
	}
}
