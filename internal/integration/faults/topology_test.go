package faults_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// eventually retries op, a request to a topology that is electing or
// reconfiguring, until it succeeds, failing t after within.
func eventually(t *testing.T, what string, within time.Duration, op func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		err := op(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// role returns unit's role now, and whom it follows.
func role(t *testing.T, tp *faults.Topology, unit string) (string, string) {
	t.Helper()
	n := tp.Node(t, unit)
	return n.Role, n.Peer
}

// healed heals f and checks that unit is back as wantRole (of wantPeer).
func healed(t *testing.T, tp *faults.Topology, f *faults.Fault, unit, wantRole, wantPeer string) {
	t.Helper()
	f.Heal()
	if r, peer := role(t, tp, unit); r != wantRole || peer != wantPeer {
		t.Errorf("%s after healing %s is %s (of %q), want %s (of %q)", unit, f, r, peer, wantRole, wantPeer)
	}
}

func follower(t *testing.T, tp *faults.Topology) string {
	t.Helper()
	for _, n := range tp.Nodes(t) {
		if n.Role == "follower" {
			return n.Unit
		}
	}
	t.Fatalf("no follower in %v", tp.Nodes(t))
	return ""
}

func TestEtcdCluster(t *testing.T) {
	t.Parallel() // a private set of its own; most of the time goes to waiting for elections
	tp := faults.Start(t, testenv.EtcdCluster)
	n := tp.Net(t)
	cli := etcdClient(t, n.Addrs(tp.Addrs()))
	put := func(v string) func(ctx context.Context) error {
		return func(ctx context.Context) error { _, err := cli.Put(ctx, "k", v); return err }
	}
	eventually(t, "put", 10*time.Second, put("0"))
	if got := len(tp.Nodes(t)); got != 3 {
		t.Fatalf("%d members, want 3", got)
	}

	// A member killed or paused: the other two keep a quorum.
	for _, tc := range []struct {
		name   string
		inject func(testing.TB, string) *faults.Fault
		role   string
	}{
		{"KillFollower", tp.Kill, "down"},
		{"PauseFollower", tp.Pause, "paused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := follower(t, tp)
			f := tc.inject(t, u)
			if r, _ := role(t, tp, u); r != tc.role {
				t.Fatalf("%s is %s, want %s", u, r, tc.role)
			}
			eventually(t, "put with a member "+tc.role, 10*time.Second, put(tc.name))
			healed(t, tp, f, u, "follower", "")
		})
	}

	t.Run("KillLeader", func(t *testing.T) {
		old, next, f := tp.KillLeader(t)
		if next.Unit == old.Unit || next.Role != "leader" {
			t.Fatalf("leader %s killed, new leader %+v", old.Unit, next)
		}
		eventually(t, "put after the leader was killed", 10*time.Second, put("3"))
		resp, err := cli.Get(t.Context(), "k")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "3" {
			t.Errorf("get after the new election: %v, %v", resp, err)
		}
		healed(t, tp, f, old.Unit, "follower", "")
	})
}

func TestConsulCluster(t *testing.T) {
	t.Parallel() // a private set of its own; most of the time goes to waiting for elections
	tp := faults.Start(t, testenv.ConsulCluster)
	n := tp.Net(t)
	client := consulClient(t, n.Addr(tp.Addrs()[0]))
	put := func(v string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := client.KV().Put(&api.KVPair{Key: "k", Value: []byte(v)}, (&api.WriteOptions{}).WithContext(ctx))
			return err
		}
	}
	eventually(t, "put", 10*time.Second, put("0"))
	var servers int
	for _, n := range tp.Nodes(t) {
		if n.Role == "leader" || n.Role == "follower" {
			servers++
		}
	}
	if servers != 3 {
		t.Fatalf("%d servers, want 3: %v", servers, tp.Nodes(t))
	}

	old, next, f := tp.KillLeader(t)
	if next.Unit == old.Unit {
		t.Fatalf("leader %s killed, and it is still the leader", old.Unit)
	}
	eventually(t, "put after the leader was killed", 10*time.Second, put("1"))
	pair, _, err := client.KV().Get("k", (&api.QueryOptions{RequireConsistent: true}).WithContext(t.Context()))
	if err != nil || pair == nil || string(pair.Value) != "1" {
		t.Errorf("consistent get after the new election: %v, %v", pair, err)
	}
	// session_ttl_min is 1s on the servers.
	id, _, err := client.Session().Create(&api.SessionEntry{TTL: "1s"}, (&api.WriteOptions{}).WithContext(t.Context()))
	if err != nil {
		t.Fatalf("a session with a 1s TTL: %v", err)
	}
	_, _ = client.Session().Destroy(id, nil)
	healed(t, tp, f, old.Unit, "follower", "")
}

func TestRedisSentinel(t *testing.T) {
	t.Parallel() // a private set of its own; most of the time goes to waiting for elections
	tp := faults.Start(t, testenv.RedisSentinel)
	n := tp.Net(t)
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    tp.SentinelMaster(),
		SentinelAddrs: tp.Addrs(),
		Dialer:        n.DialContext,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	// set writes k and waits until the replicas (2, or 1 while one node is
	// down) have it, so that a failover cannot lose it.
	set := func(v string, replicas int) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			if err := rdb.Set(ctx, "k", v, 0).Err(); err != nil {
				return err
			}
			acked, err := rdb.Do(ctx, "WAIT", replicas, 1000).Int()
			if err == nil && acked < replicas {
				err = fmt.Errorf("WAIT: %d replicas have the write, want %d", acked, replicas)
			}
			return err
		}
	}
	check := func(want string) {
		t.Helper()
		eventually(t, "get", 15*time.Second, func(ctx context.Context) error {
			got, err := rdb.Get(ctx, "k").Result()
			if err == nil && got != want {
				return fmt.Errorf("got %q, want %q", got, want)
			}
			return err
		})
	}
	eventually(t, "set", 10*time.Second, set("0", 2))
	primary := tp.Leader(t)
	if primary.Unit != "redis-ha-1" {
		t.Errorf("first primary %s, want redis-ha-1", primary.Unit)
	}
	// The client reached the primary through a proxy made by its dialer.
	if p := n.Proxy(primary.Addr); p.Conns() == 0 {
		t.Errorf("no connection to the primary %s goes through its proxy", primary.Unit)
	}

	t.Run("KillPrimary", func(t *testing.T) {
		old, next, f := tp.KillLeader(t)
		if next.Unit == old.Unit || next.Role != "primary" {
			t.Fatalf("primary %s killed, new primary %+v", old.Unit, next)
		}
		check("0")
		eventually(t, "set after the failover", 15*time.Second, set("1", 1))
		healed(t, tp, f, old.Unit, "replica", next.Unit)
	})

	t.Run("Failover", func(t *testing.T) {
		old, next := tp.Failover(t)
		if r, peer := role(t, tp, old.Unit); r != "replica" || peer != next.Unit {
			t.Errorf("old primary %s after the failover is %s of %q, want a replica of %s", old.Unit, r, peer, next.Unit)
		}
		check("1")
		eventually(t, "set after the failover", 15*time.Second, set("2", 2))
	})
}

func TestRedisClusterHA(t *testing.T) {
	t.Parallel() // a private set of its own; most of the time goes to waiting for elections
	tp := faults.Start(t, testenv.RedisClusterHA)
	n := tp.Net(t)
	// A refused connection to a killed primary is no MOVED and not
	// retried: go-redis learns of the promotion only when it reloads the
	// slots, by default every 60 s.
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: tp.Addrs(), Dialer: n.DialContext,
		ClusterStateReloadInterval: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	keys := make([]string, 30) // spread over the slots of all primaries
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
	}
	// write sets every key to v and waits until its replica has it (but
	// for the shard whose primary is down, which has none).
	write := func(v string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			for _, k := range keys {
				if err := rdb.Set(ctx, k, v, 0).Err(); err != nil {
					return err
				}
			}
			return rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
				info, err := c.Info(ctx, "replication").Result()
				if err != nil || strings.Contains(info, "connected_slaves:0") {
					return err
				}
				acked, err := c.Do(ctx, "WAIT", 1, 1000).Int()
				if err == nil && acked != 1 {
					err = fmt.Errorf("WAIT on %s: %d replicas", c.Options().Addr, acked)
				}
				return err
			})
		}
	}
	read := func(want string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			for _, k := range keys {
				got, err := rdb.Get(ctx, k).Result()
				if err != nil {
					return err
				}
				if got != want {
					return fmt.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			return nil
		}
	}
	eventually(t, "write", 10*time.Second, write("0"))

	var replica, primary string
	primaries := 0
	for _, n := range tp.Nodes(t) {
		switch n.Role {
		case "primary":
			primaries++
		case "replica":
			replica, primary = n.Unit, n.Peer
		}
	}
	if primaries != 3 || replica == "" {
		t.Fatalf("nodes %v, want 3 primaries with a replica each", tp.Nodes(t))
	}

	t.Run("PromoteReplica", func(t *testing.T) {
		old, promoted := tp.PromoteReplica(t, replica)
		if old.Unit != primary || promoted.Role != "primary" {
			t.Fatalf("CLUSTER FAILOVER on %s: old %+v, promoted %+v", replica, old, promoted)
		}
		if r, peer := role(t, tp, primary); r != "replica" || peer != replica {
			t.Errorf("old primary %s is %s of %q, want a replica of %s", primary, r, peer, replica)
		}
		eventually(t, "read after the promotion", 15*time.Second, read("0"))
		eventually(t, "write after the promotion", 15*time.Second, write("1"))
	})

	t.Run("KillPrimary", func(t *testing.T) {
		// replica is a primary now, and primary its replica.
		promoted, f := tp.KillPrimary(t, replica)
		if promoted.Unit != primary {
			t.Fatalf("killed %s, promoted %s, want %s", replica, promoted.Unit, primary)
		}
		eventually(t, "read after the kill", 20*time.Second, read("1"))
		eventually(t, "write after the kill", 20*time.Second, write("2"))
		healed(t, tp, f, replica, "replica", primary)
	})
}

func TestMemcachedCluster(t *testing.T) {
	t.Parallel() // a private set of its own; most of the time goes to waiting for elections
	tp := faults.Start(t, testenv.MemcachedCluster)
	n := tp.Net(t)
	mc := memcache.New(n.Addrs(tp.Addrs())...)
	mc.Timeout = 500 * time.Millisecond
	t.Cleanup(func() { _ = mc.Close() })
	// Keys spread over the three nodes; a paused node fails its keys only.
	keys := make([]string, 30)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
		if err := mc.Set(&memcache.Item{Key: keys[i], Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	nodes := tp.Nodes(t)
	if len(nodes) != 3 {
		t.Fatalf("%d nodes, want 3", len(nodes))
	}
	f := tp.Pause(t, nodes[1].Unit)
	failed := 0
	for _, k := range keys {
		if _, err := mc.Get(k); err != nil {
			if !isTimeout(err) {
				t.Errorf("get %s with a node paused: %v, want a success or a timeout", k, err)
			}
			failed++
		}
	}
	if failed == 0 || failed == len(keys) {
		t.Errorf("%d of %d keys failed with one of three nodes paused, want some", failed, len(keys))
	}
	f.Heal()
	for _, k := range keys {
		if _, err := mc.Get(k); err != nil {
			t.Errorf("get %s after the heal: %v", k, err)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	var ct *memcache.ConnectTimeoutError
	return (errors.As(err, &ne) && ne.Timeout()) || errors.As(err, &ct)
}

// pgAnswers reports whether the PostgreSQL server at addr answers an
// SSLRequest within a second (with 'N': no TLS here).
func pgAnswers(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		return false
	}
	b := make([]byte, 1)
	_, err = io.ReadFull(conn, b)
	return err == nil && b[0] == 'N'
}

func TestPostgres(t *testing.T) {
	t.Parallel() // a private set of its own
	tp := faults.Start(t, testenv.Postgres)
	u, err := url.Parse(tp.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	if !pgAnswers(u.Host) {
		t.Fatal("postgres does not answer")
	}
	for _, tc := range []struct {
		name   string
		inject func(testing.TB, string) *faults.Fault
		role   string
	}{
		{"Pause", tp.Pause, "paused"},
		{"Kill", tp.Kill, "down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.inject(t, "postgres")
			if r, _ := role(t, tp, "postgres"); r != tc.role {
				t.Fatalf("postgres is %s, want %s", r, tc.role)
			}
			if pgAnswers(u.Host) {
				t.Errorf("postgres answers while %s", tc.role)
			}
			healed(t, tp, f, "postgres", "node", "")
			if !pgAnswers(u.Host) {
				t.Error("postgres does not answer after the heal")
			}
		})
	}
	tp.Restart(t, "postgres")
	if !pgAnswers(u.Host) {
		t.Error("postgres does not answer after a restart")
	}
}
