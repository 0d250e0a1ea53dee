package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bsm "github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

func redisBackend() Backend {
	return Backend{
		Name: "redis",
		Env:  func(tb testing.TB) Env { return Env{RedisAddr: testenv.RedisAddr(tb)} },
		Libs: []Lib{
			{
				Name: "idemlock",
				Desc: "idemlock redislock: one Lua script per take and per release; waiters woken by pub/sub",
				Setup: redisSetup(func(rdb *redis.Client) Client {
					l, err := redislock.New(rdb)
					if err != nil {
						panic(err) // a non-nil client and no options: never
					}
					return idemClient{l}
				}),
			},
			{
				Name:        "idemlock-queued",
				Label:       "idemlock (WithQueue)",
				Desc:        "idemlock redislock with WithQueue: waiters queue per key (sorted sets), a release wakes only the head",
				HandoffOnly: true,
				Scaling:     true,
				Setup: redisSetup(func(rdb *redis.Client) Client {
					l, err := redislock.New(rdb, redislock.WithQueue())
					if err != nil {
						panic(err) // a non-nil client and a valid option: never
					}
					return idemClient{l}
				}),
			},
			{
				Name:       "bsm-redislock",
				Label:      "bsm-redislock (retry 100 ms)",
				PollPeriod: 100 * time.Millisecond,
				Desc: "bsm/redislock v0.9.4 with its documented retry: its default is NoRetry (Obtain fails at once), " +
					"so waiting uses LinearBackoff(100ms), the strategy of its Obtain example",
				Setup: redisSetup(func(rdb *redis.Client) Client {
					return bsmClient{c: bsm.New(rdb), retry: bsm.LinearBackoff(100 * time.Millisecond)}
				}),
			},
			{
				Name:        "bsm-redislock-tuned",
				Label:       "bsm-redislock (retry 1-2 ms)",
				Desc:        "bsm/redislock retrying every 1-2 ms (uniform jitter)",
				HandoffOnly: true,
				Scaling:     true,
				Setup: redisSetup(func(rdb *redis.Client) Client {
					return bsmClient{c: bsm.New(rdb), retry: jitterRetry{}}
				}),
			},
			{
				Name:  "redsync",
				Label: "redsync (default: 32 tries, 50-250 ms)",
				Desc: "go-redsync/redsync v4.18.1 on one node with its default retry: 32 tries, 50-250 ms apart " +
					"(the caller tries again after ErrFailed)",
				Setup: redisSetup(func(rdb *redis.Client) Client {
					return redsyncClient{rs: redsync.New(goredis.NewPool(rdb))}
				}),
			},
			{
				Name:        "redsync-tuned",
				Label:       "redsync (retry 1-2 ms)",
				Desc:        "redsync retrying every 1-2 ms (uniform jitter), without a try limit",
				HandoffOnly: true,
				Scaling:     true,
				Setup: redisSetup(func(rdb *redis.Client) Client {
					return redsyncClient{rs: redsync.New(goredis.NewPool(rdb)), opts: []redsync.Option{
						redsync.WithRetryDelayFunc(func(int) time.Duration { return jitter() }),
						redsync.WithTries(math.MaxInt32),
					}}
				}),
			},
		},
		Meter: newRedisMeter,
		Load:  newRedisLoad,
		ServerTime: func(tb testing.TB, env Env) func(testing.TB) float64 {
			rdb := redis.NewClient(&redis.Options{Addr: env.RedisAddr, PoolSize: 1})
			tb.Cleanup(func() { _ = rdb.Close() })
			return func(tb testing.TB) float64 {
				var total float64
				for name, st := range commandstats(tb, rdb) {
					if !metaCommands[name] {
						total += float64(st.usec)
					}
				}
				return total
			}
		},
	}
}

// redisSetup returns a Setup whose clients each have a go-redis client of
// their own (default options: pool of 10 connections per CPU).
func redisSetup(wrap func(*redis.Client) Client) func(testing.TB, Env) func() Client {
	return func(tb testing.TB, env Env) func() Client {
		return func() Client {
			rdb := redis.NewClient(&redis.Options{Addr: env.RedisAddr})
			if env.RedisHook != nil {
				rdb.AddHook(env.RedisHook)
			}
			c := wrap(rdb)
			tb.Cleanup(func() {
				if cl, ok := c.(idemClient); ok {
					_ = cl.l.(*redislock.Locker).Close()
				}
				_ = rdb.Close()
			})
			return c
		}
	}
}

// jitter is the tuned retry delay: uniform in [1 ms, 2 ms).
func jitter() time.Duration {
	return time.Millisecond + rand.N(time.Millisecond)
}

// jitterRetry is a bsm RetryStrategy of jitter() forever.
type jitterRetry struct{}

func (jitterRetry) NextBackoff() time.Duration { return jitter() }

// bsmClient drives github.com/bsm/redislock.
type bsmClient struct {
	c     *bsm.Client
	retry bsm.RetryStrategy
}

func (c bsmClient) Try(ctx context.Context, key string) (Held, bool, error) {
	l, err := c.c.Obtain(ctx, key, TTL, nil) // default options: NoRetry
	switch {
	case err == nil:
		return l, true, nil
	case errors.Is(err, bsm.ErrNotObtained):
		return nil, false, nil
	}
	return nil, false, err
}

func (c bsmClient) Lock(ctx context.Context, key string) (Held, error) {
	for {
		l, err := c.c.Obtain(ctx, key, TTL, &bsm.Options{RetryStrategy: c.retry})
		switch {
		case err == nil:
			return l, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, bsm.ErrNotObtained), errors.Is(err, context.DeadlineExceeded):
			continue // its retry budget ran out: a caller that must wait asks again
		}
		return nil, err
	}
}

// redsyncClient drives github.com/go-redsync/redsync/v4 on one node.
type redsyncClient struct {
	rs   *redsync.Redsync
	opts []redsync.Option
}

func (c redsyncClient) mutex(key string) *redsync.Mutex {
	return c.rs.NewMutex(key, append([]redsync.Option{redsync.WithExpiry(TTL)}, c.opts...)...)
}

func (c redsyncClient) Try(ctx context.Context, key string) (Held, bool, error) {
	m := c.mutex(key)
	err := m.TryLockContext(ctx)
	var taken *redsync.ErrTaken
	switch {
	case err == nil:
		return redsyncHeld{m}, true, nil
	case errors.As(err, &taken), errors.Is(err, redsync.ErrFailed):
		return nil, false, nil
	}
	return nil, false, err
}

func (c redsyncClient) Lock(ctx context.Context, key string) (Held, error) {
	for {
		m := c.mutex(key)
		err := m.LockContext(ctx)
		var taken *redsync.ErrTaken
		switch {
		case err == nil:
			return redsyncHeld{m}, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.As(err, &taken), errors.Is(err, redsync.ErrFailed):
			continue // all tries failed: a caller that must wait asks again
		}
		return nil, err
	}
}

type redsyncHeld struct{ m *redsync.Mutex }

func (h redsyncHeld) Release(ctx context.Context) error {
	ok, err := h.m.UnlockContext(ctx)
	if err == nil && !ok {
		err = errors.New("redsync: unlock reported not held")
	}
	return err
}

// redisMeter counts requests at the Redis server in two ways: MONITOR,
// which shows every command a client sent and, marked "lua", every command
// a script ran; and INFO commandstats, whose calls count both. It also
// counts, on the client side, the commands go-redis sent (a hook).
type redisMeter struct {
	addr  string
	info  *redis.Client
	hooks *countHook

	mon      net.Conn
	marker   string
	done     chan struct{}
	client   map[string]int // commands sent by clients, by name
	lua      map[string]int // commands run by scripts, by name
	monErr   error
	before   map[string]cmdstat
	hookFrom int64
}

func newRedisMeter(tb testing.TB, env Env) (Env, Meter) {
	m := &redisMeter{addr: env.RedisAddr, hooks: &countHook{}}
	// One connection, opened now: its set-up (HELLO, CLIENT SETINFO) stays
	// out of the counts.
	m.info = redis.NewClient(&redis.Options{Addr: env.RedisAddr, PoolSize: 1})
	tb.Cleanup(func() { _ = m.info.Close() })
	if err := m.info.Ping(context.Background()).Err(); err != nil {
		tb.Fatalf("redis meter: %v", err)
	}
	env.RedisHook = m.hooks
	return env, m
}

func (m *redisMeter) Start(tb testing.TB) {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", m.addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("redis meter: %v", err)
	}
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		tb.Fatalf("redis meter: MONITOR: %v", err)
	}
	rd := bufio.NewReader(conn)
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		tb.Fatalf("redis meter: MONITOR answered %q, %v", line, err)
	}
	m.mon = conn
	m.marker = fmt.Sprintf("idemlock-bench-marker-%d", rand.Uint64())
	m.done = make(chan struct{})
	m.client, m.lua = map[string]int{}, map[string]int{}
	go m.read(rd)
	m.before = commandstats(tb, m.info)
	m.hookFrom = m.hooks.n.Load()
}

// read counts MONITOR lines until the marker shows up. A line is
// +<time> [<db> <client address or "lua">] "<COMMAND>" "<arg>" ...
func (m *redisMeter) read(rd *bufio.Reader) {
	defer close(m.done)
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			m.monErr = err
			return
		}
		if strings.Contains(line, m.marker) {
			return
		}
		open, end := strings.IndexByte(line, '['), strings.IndexByte(line, ']')
		if open < 0 || end < open {
			continue
		}
		who := line[open+1 : end]
		rest := strings.TrimSpace(line[end+1:])
		name := rest
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			name, _ = strconv.Unquote(q)
		}
		name = strings.ToUpper(name)
		switch {
		case strings.HasSuffix(who, " lua"):
			m.lua[name]++
		case name == "INFO":
			// the meter's own
		default:
			m.client[name]++
		}
	}
}

func (m *redisMeter) Stop(tb testing.TB) Counts {
	tb.Helper()
	hooked := m.hooks.n.Load() - m.hookFrom
	if err := m.info.Echo(context.Background(), m.marker).Err(); err != nil {
		tb.Fatalf("redis meter: ECHO: %v", err)
	}
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		tb.Fatal("redis meter: MONITOR did not show the marker within 30 s")
	}
	_ = m.mon.Close()
	if m.monErr != nil {
		tb.Fatalf("redis meter: reading MONITOR: %v", m.monErr)
	}
	after := commandstats(tb, m.info)
	c := Counts{"hook-req": float64(hooked)}
	for name, n := range m.client {
		c["req"] += float64(n)
		c["req:"+name] += float64(n)
	}
	for name, n := range m.lua {
		c["lua:"+name] += float64(n)
	}
	for name, st := range after {
		if !metaCommands[name] { // the meter's and connection set-up
			c["cmds"] += float64(st.calls - m.before[name].calls)
		}
	}
	return c
}

// cmdstat is one command's line of INFO commandstats.
type cmdstat struct{ calls, usec int64 }

// metaCommands are the commands of meters and connection set-up, left out
// of every count.
var metaCommands = map[string]bool{"info": true, "echo": true, "monitor": true, "ping": true, "hello": true, "client": true, "config": true}

// commandstats reads INFO commandstats, by command name.
func commandstats(tb testing.TB, rdb *redis.Client) map[string]cmdstat {
	tb.Helper()
	s, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatalf("redis: INFO commandstats: %v", err)
	}
	out := map[string]cmdstat{}
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		var st cmdstat
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "calls":
				st.calls = n
			case "usec":
				st.usec = n
			}
		}
		out[strings.ToLower(strings.TrimPrefix(name, "cmdstat_"))] = st
	}
	return out
}

// redisLoad counts the commands the clients send, with a go-redis hook.
type redisLoad struct {
	hook *countHook
	from int64
}

func newRedisLoad(_ testing.TB, env Env) (Env, Meter) {
	m := &redisLoad{hook: &countHook{}}
	env.RedisHook = m.hook
	return env, m
}

func (m *redisLoad) Start(testing.TB) { m.from = m.hook.n.Load() }

func (m *redisLoad) Stop(testing.TB) Counts {
	return Counts{"req": float64(m.hook.n.Load() - m.from)}
}

// countHook counts the commands go-redis clients send.
type countHook struct{ n atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// redisVersion returns the server's redis_version.
func redisVersion(addr string) string {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v
		}
	}
	return "unknown"
}
