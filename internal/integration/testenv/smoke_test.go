package testenv_test

// Smoke tests: one per server, writing a key and reading it back through the
// Go client the backend uses. They prove the servers and their addresses
// before any backend exists, and each leaves no goroutine behind.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock/internal/leakcheck"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// unique returns a key and a value no other run of the smoke tests uses.
func unique(prefix string) (key, value string) {
	n := time.Now().UnixNano()
	return fmt.Sprintf("idemlock-smoke/%s/%d", prefix, n), "value-" + strconv.FormatInt(n, 36)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestSmokeRedis(t *testing.T) {
	defer leakcheck.VerifyNone(t)
	addr := testenv.RedisAddr(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer func() {
		if err := rdb.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	c := ctx(t)
	key, value := unique("redis")
	if err := rdb.Set(c, key, value, time.Minute).Err(); err != nil {
		t.Fatalf("SET %s: %v", key, err)
	}
	got, err := rdb.Get(c, key).Result()
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	if got != value {
		t.Errorf("GET %s = %q, want %q", key, got, value)
	}
	if err := rdb.Del(c, key).Err(); err != nil {
		t.Errorf("DEL %s: %v", key, err)
	}
}

func TestSmokeRedisCluster(t *testing.T) {
	defer leakcheck.VerifyNone(t)
	addrs := testenv.RedisClusterAddrs(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer func() {
		if err := rdb.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	c := ctx(t)

	// A real cluster: three masters sharing all 16384 slots.
	shards, err := rdb.ClusterShards(c).Result()
	if err != nil {
		t.Fatalf("CLUSTER SHARDS: %v", err)
	}
	type owned struct {
		start, end int64
		master     string
	}
	var ranges []owned
	covered, masters := int64(0), map[string]bool{}
	for _, sh := range shards {
		for _, n := range sh.Nodes {
			if n.Role != "master" {
				continue
			}
			addr := net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
			masters[addr] = true
			for _, r := range sh.Slots {
				covered += r.End - r.Start + 1
				ranges = append(ranges, owned{r.Start, r.End, addr})
			}
		}
	}
	if covered != 16384 || len(masters) != 3 {
		t.Fatalf("cluster covers %d slots on %d masters %v, want 16384 on 3", covered, len(masters), masters)
	}

	// Keys spread over the masters; each is written and read back.
	want := map[string]string{}
	used := map[string]bool{}
	for i := 0; i < 30; i++ {
		key, value := unique("cluster-" + strconv.Itoa(i))
		if err := rdb.Set(c, key, value, time.Minute).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		want[key] = value
		slot, err := rdb.ClusterKeySlot(c, key).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
		}
		for _, r := range ranges {
			if r.start <= slot && slot <= r.end {
				used[r.master] = true
			}
		}
	}
	for key, value := range want {
		got, err := rdb.Get(c, key).Result()
		if err != nil {
			t.Fatalf("GET %s: %v", key, err)
		}
		if got != value {
			t.Errorf("GET %s = %q, want %q", key, got, value)
		}
		if err := rdb.Del(c, key).Err(); err != nil {
			t.Errorf("DEL %s: %v", key, err)
		}
	}
	if len(used) < 2 {
		t.Errorf("30 keys landed on %d master(s), want them spread over several", len(used))
	}
}

func TestSmokeEtcd(t *testing.T) {
	defer leakcheck.VerifyNone(t)
	endpoints := testenv.EtcdEndpoints(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	defer func() {
		if err := cli.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	c := ctx(t)
	key, value := unique("etcd")
	if _, err := cli.Put(c, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	resp, err := cli.Get(c, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != value {
		t.Errorf("get %s = %v, want one value %q", key, resp.Kvs, value)
	}
	if _, err := cli.Delete(c, key); err != nil {
		t.Errorf("delete %s: %v", key, err)
	}
}

func TestSmokeConsul(t *testing.T) {
	defer leakcheck.VerifyNone(t)
	cfg := api.DefaultConfig()
	cfg.Address = testenv.ConsulAddr(t)
	cfg.Scheme = "http"
	// The pooled transport keeps idle connections (and their goroutines);
	// close them so the client leaves nothing behind.
	defer cfg.Transport.CloseIdleConnections()
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	q := (&api.WriteOptions{}).WithContext(ctx(t))
	key, value := unique("consul")
	if _, err := client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, q); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	pair, _, err := client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx(t)))
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if pair == nil || string(pair.Value) != value {
		t.Errorf("get %s = %v, want %q", key, pair, value)
	}
	if _, err := client.KV().Delete(key, q); err != nil {
		t.Errorf("delete %s: %v", key, err)
	}

	// session_ttl_min is lowered, so a 1s session TTL is accepted (Consul's
	// default minimum is 10s).
	id, _, err := client.Session().Create(&api.SessionEntry{TTL: "1s", Behavior: api.SessionBehaviorDelete}, q)
	if err != nil {
		t.Fatalf("create session with 1s TTL: %v", err)
	}
	if _, err := client.Session().Destroy(id, q); err != nil {
		t.Errorf("destroy session %s: %v", id, err)
	}
}

func TestSmokeMemcached(t *testing.T) {
	defer leakcheck.VerifyNone(t)
	mc := memcache.New(testenv.MemcachedAddr(t))
	defer func() {
		if err := mc.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	key, value := unique("memcached")
	if err := mc.Set(&memcache.Item{Key: key, Value: []byte(value), Expiration: 60}); err != nil {
		t.Fatalf("set %s: %v", key, err)
	}
	item, err := mc.Get(key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if string(item.Value) != value {
		t.Errorf("get %s = %q, want %q", key, item.Value, value)
	}
	if err := mc.Delete(key); err != nil {
		t.Errorf("delete %s: %v", key, err)
	}
}

// A private server is the fault tests' own: restarting it loses its data
// and leaves the shared server untouched; pausing it makes it unresponsive.
func TestPrivateServer(t *testing.T) {
	shared := memcache.New(testenv.MemcachedAddr(t))
	t.Cleanup(func() { _ = shared.Close() })
	sharedKey := "testenv-private-" + t.Name()
	if err := shared.Set(&memcache.Item{Key: sharedKey, Value: []byte("shared")}); err != nil {
		t.Fatal(err)
	}

	in := testenv.Private(t, testenv.Memcached)
	if in.Addr() == testenv.MemcachedAddr(t) {
		t.Fatalf("private memcached shares the address %s", in.Addr())
	}
	mc := memcache.New(in.Addr())
	mc.Timeout = 300 * time.Millisecond
	t.Cleanup(func() { _ = mc.Close() })
	if err := mc.Set(&memcache.Item{Key: "k", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}

	in.Pause(t)
	if _, err := mc.Get("k"); err == nil {
		t.Errorf("a paused server answered")
	}
	in.Resume(t)
	if it, err := mc.Get("k"); err != nil || string(it.Value) != "v" {
		t.Errorf("after resume: Get = %v, %v; want the value back", it, err)
	}

	in.Restart(t)
	_, err := mc.Get("k")
	if err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
		_, err = mc.Get("k") // the first use of a pooled connection finds it closed
	}
	if !errors.Is(err, memcache.ErrCacheMiss) {
		t.Errorf("after restart: Get = %v, want a cache miss (memcached keeps nothing)", err)
	}
	if it, err := shared.Get(sharedKey); err != nil || string(it.Value) != "shared" {
		t.Errorf("the shared server lost its key to a private restart: %v, %v", it, err)
	}
}
