package redislock_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// moveSlot migrates a hash slot, with its keys, from one Cluster master to
// another, as redis-cli --cluster reshard does.
func moveSlot(tb testing.TB, nodes []*redis.Client, slot int, from, to *redis.Client) {
	tb.Helper()
	ctx := context.Background()
	fromID, err := from.ClusterMyID(ctx).Result()
	if err != nil {
		tb.Fatalf("CLUSTER MYID: %v", err)
	}
	toID, err := to.ClusterMyID(ctx).Result()
	if err != nil {
		tb.Fatalf("CLUSTER MYID: %v", err)
	}
	must := func(c *redis.Client, args ...any) {
		tb.Helper()
		if err := c.Do(ctx, args...).Err(); err != nil {
			tb.Fatalf("%v on %s: %v", args, c.Options().Addr, err)
		}
	}
	must(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID)
	must(from, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID)
	host, port, _ := net.SplitHostPort(to.Options().Addr)
	for {
		keys, err := from.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		if err != nil {
			tb.Fatalf("CLUSTER GETKEYSINSLOT: %v", err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(from, args...)
	}
	for _, n := range nodes {
		must(n, "CLUSTER", "SETSLOT", slot, "NODE", toID)
	}
}

// TestMovedDuringWait migrates the slot of a key to another master while a
// waiter waits on it. The old node drops the sharded subscription
// (SUNSUBSCRIBE); the waiter must re-subscribe on the new owner, wake on the
// holder's release (which go-redis redirects there with MOVED), and get a
// greater token, because the slot's counter moved along.
//
// It reshards a private Cluster, leaving the shared one alone.
func TestMovedDuringWait(t *testing.T) {
	cluster, _ := private(t, testenv.RedisCluster)
	noLeak(t)
	prefix := cluster.testPrefix(t)
	holder := locker(t, cluster.client(t, ""), redislock.WithPrefix(prefix))
	waiter := locker(t, cluster.client(t, ""), redislock.WithPrefix(prefix))
	ctx := t.Context()
	nodes := cluster.nodes(t)
	channel := prefix + "{k}"
	slot64, err := nodes[0].ClusterKeySlot(ctx, channel).Result()
	if err != nil {
		t.Fatal(err)
	}
	slot := int(slot64)
	cc := cluster.client(t, "").(*redis.ClusterClient)
	owner, err := cc.MasterForKey(ctx, channel)
	if err != nil {
		t.Fatal(err)
	}
	var from, to *redis.Client
	for _, n := range nodes {
		if n.Options().Addr == owner.Options().Addr {
			from = n
		} else if to == nil {
			to = n
		}
	}
	if from == nil || to == nil {
		t.Fatalf("cannot find the owner %s of slot %d and another master", owner.Options().Addr, slot)
	}

	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		le  lock.Lease
		err error
	}
	got := make(chan result, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		w, err := lock.Acquire(wctx, waiter, "k", time.Minute)
		got <- result{w, err}
	}()
	waitFor(t, "the waiter subscribed", 5*time.Second, func() bool { return cluster.subscribers(t, channel) == 1 })

	moveSlot(t, nodes, slot, from, to)
	waitFor(t, "the waiter subscribed on the slot's new owner", 10*time.Second, func() bool {
		m, err := to.PubSubShardNumSub(ctx, channel).Result()
		return err == nil && m[channel] == 1
	})
	released := time.Now()
	if err := le.Release(ctx); err != nil {
		t.Fatalf("Release after the slot moved: %v", err)
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("the waiter after the slot moved: %v", r.err)
	}
	if d := time.Since(released); d > time.Second {
		t.Errorf("the waiter took the key %v after the release", d)
	}
	if r.le.Token() <= le.Token() {
		t.Errorf("token %d after the slot moved, want greater than the holder's %d", r.le.Token(), le.Token())
	}
	if err := r.le.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
