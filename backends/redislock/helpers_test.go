package redislock_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock/internal/leakcheck"
	"github.com/redis/go-redis/v9"
)

// nodes returns a plain client for every server of tp: the single node, or
// each Cluster node.
func (tp topology) nodes(tb testing.TB) []*redis.Client {
	tb.Helper()
	var out []*redis.Client
	for _, a := range tp.addrs(tb) {
		c := redis.NewClient(&redis.Options{Addr: a})
		tb.Cleanup(func() { _ = c.Close() })
		out = append(out, c)
	}
	return out
}

// conn is one client connection as CLIENT LIST shows it.
type conn struct {
	node   *redis.Client
	fields map[string]string
}

// pubsub reports whether the connection is subscribed to anything.
func (c conn) pubsub() bool {
	return c.fields["sub"] != "0" || c.fields["ssub"] != "0" || c.fields["psub"] != "0"
}

// conns returns the connections named name on every node of tp.
func (tp topology) conns(tb testing.TB, name string) []conn {
	tb.Helper()
	var out []conn
	for _, n := range tp.nodes(tb) {
		list, err := n.ClientList(context.Background()).Result()
		if err != nil {
			tb.Fatalf("CLIENT LIST on %s: %v", n.Options().Addr, err)
		}
		for _, line := range strings.Split(list, "\n") {
			fields := map[string]string{}
			for _, f := range strings.Fields(line) {
				k, v, _ := strings.Cut(f, "=")
				fields[k] = v
			}
			if fields["name"] == name {
				out = append(out, conn{n, fields})
			}
		}
	}
	return out
}

// kill closes, on the server, every connection named name that pick
// selects, and returns how many it closed.
func (tp topology) kill(tb testing.TB, name string, pick func(conn) bool) int {
	tb.Helper()
	n := 0
	for _, c := range tp.conns(tb, name) {
		if pick == nil || pick(c) {
			if err := c.node.Do(context.Background(), "CLIENT", "KILL", "ID", c.fields["id"]).Err(); err != nil {
				tb.Fatalf("CLIENT KILL ID %s: %v", c.fields["id"], err)
			}
			n++
		}
	}
	return n
}

// subscribers returns how many connections are subscribed to channel
// (sharded channels in Cluster), summed over the nodes.
func (tp topology) subscribers(tb testing.TB, channel string) int64 {
	tb.Helper()
	var total int64
	for _, n := range tp.nodes(tb) {
		var m map[string]int64
		var err error
		if !tp.cluster {
			m, err = n.PubSubNumSub(context.Background(), channel).Result()
		} else {
			m, err = n.PubSubShardNumSub(context.Background(), channel).Result()
		}
		if err != nil {
			continue // in Cluster, nodes that do not own the channel's slot say MOVED
		}
		total += m[channel]
	}
	return total
}

// waitFor polls cond, which observes server state that sends no event,
// until it holds, and fails tb if that takes longer than within.
func waitFor(tb testing.TB, what string, within time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// noLeak checks, after every other clean-up of t has run, that no
// goroutine started during t is left.
func noLeak(t *testing.T) {
	leakcheck.Check(t)
}

// quietSentinel is go-redis's logger for this test binary: it drops the
// failover client's routine "sentinel: selected/new master" lines, which the
// Sentinel tests would print by the hundred, and keeps everything else.
type quietSentinel struct{}

func (quietSentinel) Printf(_ context.Context, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if strings.HasPrefix(msg, "sentinel: selected ") || strings.HasPrefix(msg, "sentinel: new master=") {
		return
	}
	log.Print("redis: ", msg)
}

func TestMain(m *testing.M) {
	redis.SetLogger(quietSentinel{})
	os.Exit(m.Run())
}
