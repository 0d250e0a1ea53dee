// Package faults injects real faults into real servers from Go tests:
// network faults through TCP proxies in the test process, process faults
// (SIGSTOP, kill -9) and topology faults (leader kill, failover, replica
// promotion) through scripts/servers.sh, always on a private set of servers
// that no other test uses. Every fault heals when the test that made it
// ends.
//
// # Topologies
//
// [Start] starts a private set of one server or topology of
// scripts/servers.sh (the script's header lists units and ports; a private
// set adds a random offset to every port). [Shared] returns the shared
// servers, for tests that only go through proxies: on them every fault
// method fails the test.
//
//	server (testenv.)   units                                  what the library is given
//	EtcdCluster         etcd-cluster-1..3                      the 3 client endpoints
//	ConsulCluster       consul-cluster-1..3 (servers),         the client agent's HTTP address
//	                    consul-cluster-client
//	RedisSentinel       redis-ha-1..3 (1 starts primary),      the 3 Sentinels and master name
//	                    sentinel-1..3                          "idemlock" (a failover client)
//	RedisClusterHA      redis-cluster-ha-1..6 (3 primaries,    the 6 nodes (a cluster client)
//	                    1 replica each)
//	MemcachedCluster    memcached-cluster-1..3                 the 3 nodes (a client sharding over them)
//	Redis, RedisCluster, Etcd, Consul, Memcached, Postgres     the single servers, one unit each
//
// # Proxies
//
// [Topology.Net] returns a [Net]: proxies for one client (give each
// client its own Net to partition one client alone). Hand the client the
// proxies' addresses or the Net's dial function:
//
//	tp := faults.Start(t, testenv.RedisSentinel)
//	n := tp.Net(t)
//	rdb := redis.NewUniversalClient(&redis.UniversalOptions{
//		MasterName: tp.SentinelMaster(),
//		Addrs:      tp.Addrs(),    // the Sentinels
//		Dialer:     n.DialContext, // Sentinels, primary and replicas through proxies
//	})
//	etcd:      clientv3.Config{Endpoints: n.Addrs(tp.Addrs())}
//	Consul:    api.Config{Address: n.Addr(tp.Addrs()[0])}
//	memcached: memcache.New(n.Addrs(tp.Addrs())...)
//
// # Faults and how to trigger them
//
// Network (on a whole [Net], or on one [Proxy] from Net.Proxy(addr)):
//
//	latency + jitter     n.Latency(t, faults.Both, 50*time.Millisecond, 10*time.Millisecond)
//	partition            n.BlackHole(t, faults.ToServer)  // or ToClient, Both; data is held, not lost
//	one server cut off   n.Proxy(addr).BlackHole(t, faults.Both)
//	connection reset     n.Reset()                        // RST every open connection now
//	server unreachable   n.Refuse(t)                      // RST every new connection
//	lost reply           f := n.LoseNextReply(t); ...; <-f.Hit()  // applied, reply dropped, conn reset
//	                     (RESP, memcached, HTTP/1.1 by connection; HTTP/2 and gRPC by stream)
//	every reply lost     n.LoseReplies(t)
//
// Process (any unit of a private set):
//
//	pause / resume       f := tp.Pause(t, "etcd-cluster-2"); ...; f.Heal()
//	kill -9 + restart    f := tp.Kill(t, "redis-ha-3"); ...; f.Heal()   // restarts with its data, waits healthy
//	clean restart        tp.Restart(t, "postgres")
//
// Topology:
//
//	kill the leader      old, next, f := tp.KillLeader(t)  // etcd, Consul leader; Sentinel primary
//	Sentinel failover    old, next := tp.Failover(t)       // SENTINEL FAILOVER
//	replica promotion    old, next := tp.PromoteReplica(t, "redis-cluster-ha-4")  // CLUSTER FAILOVER
//	killed primary       promoted, f := tp.KillPrimary(t, "redis-cluster-ha-1")
//	roles now            tp.Nodes(t), tp.Leader(t)
//
// Each call returns once the fault is in place (a new leader elected, a
// replica promoted); a [Fault]'s Hit channel and Hits count tell when and
// how often a network fault acted, so a test waits on an event rather than
// sleeping. Heal is idempotent and runs on the test's cleanup in any case.
//
// # Why not toxiproxy
//
// github.com/Shopify/toxiproxy/v2 v2.5.0 was evaluated as the proxy
// library. It builds with Go 1.26.8 and passed a -race stress of adding
// and removing toxics under traffic with no leaked goroutine, and it offers
// latency with jitter and a black hole (its timeout toxic). It lacks the
// lost reply (forward, drop the answer, reset), one-shot faults, a reset of
// connections already open (reset_peer sets SO_LINGER only on connections
// opened after it is added, and waits for their next data), refusing new
// connections, and a way to know that a fault acted; custom toxics are
// added only as JSON through a process-wide type registry and cannot reach
// the connections, and Proxy.Stop returns before its goroutines end. It
// would also add 11 modules to the root module (among them the Prometheus
// client, zerolog, gorilla/mux and a tomb package last changed in 2014). What it would still do here (a delay queue and
// a gate per direction) is a small part of this package, so the proxy is
// written here.
package faults
