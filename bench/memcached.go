package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/internal/testenv"
)

// memcachedPoll is how often the plain add/delete lock retries.
const memcachedPoll = 2 * time.Millisecond

func memcachedBackend() Backend {
	return Backend{
		Name: "memcached",
		Env:  func(tb testing.TB) Env { return Env{MemcachedAddr: testenv.MemcachedAddr(tb)} },
		Libs: []Lib{
			{
				Name: "idemlock",
				Desc: "idemlock memcachedlock: add + incr (fencing token) to take, gets + cas to release; " +
					"waiters poll with jittered backoff (2 ms to 250 ms)",
				Setup: memcachedSetup(func(mc *memcache.Client) Client {
					l, err := memcachedlock.New(mc)
					if err != nil {
						panic(err) // a non-nil client and no options: never
					}
					return idemClient{l}
				}),
			},
			{
				Name:       "gomemcache-add",
				Label:      "gomemcache add/delete (poll 2 ms)",
				PollPeriod: memcachedPoll,
				Desc: "a plain lock on gomemcache: add to take, delete to release (no owner check, no token); " +
					"waiters retry every 2 ms",
				Setup: memcachedSetup(func(mc *memcache.Client) Client { return plainMemcached{mc} }),
			},
		},
		Meter: newMemcachedMeter,
		Load:  newMemcachedMeter,
	}
}

// memcachedSetup returns a Setup whose clients each have a gomemcache
// client of their own. Both get the same configuration: gomemcache's
// defaults with up to 64 idle connections kept (its default of 2 would
// reconnect for most requests under the 32-goroutine workload).
func memcachedSetup(wrap func(*memcache.Client) Client) func(testing.TB, Env) func() Client {
	return func(tb testing.TB, env Env) func() Client {
		return func() Client {
			mc := memcache.New(env.MemcachedAddr)
			mc.MaxIdleConns = 64
			tb.Cleanup(func() { _ = mc.Close() })
			return wrap(mc)
		}
	}
}

// plainMemcached is the lock people write by hand on memcached.
type plainMemcached struct{ mc *memcache.Client }

func (p plainMemcached) Try(ctx context.Context, key string) (Held, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	err := p.mc.Add(&memcache.Item{Key: key, Value: []byte(hex.EncodeToString(b[:])), Expiration: int32(TTL / time.Second)})
	switch {
	case err == nil:
		return plainHeld{p.mc, key}, true, nil
	case errors.Is(err, memcache.ErrNotStored):
		return nil, false, nil
	}
	return nil, false, err
}

func (p plainMemcached) Lock(ctx context.Context, key string) (Held, error) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		h, ok, err := p.Try(ctx, key)
		if err != nil || ok {
			return h, err
		}
		t.Reset(memcachedPoll)
	}
}

type plainHeld struct {
	mc  *memcache.Client
	key string
}

func (h plainHeld) Release(context.Context) error { return h.mc.Delete(h.key) }

// memcachedMeter reads memcached's `stats`: every get/gets, store (set,
// add, cas, ...), incr/decr, delete and touch the server handled.
type memcachedMeter struct {
	addr   string
	before map[string]float64
}

func newMemcachedMeter(_ testing.TB, env Env) (Env, Meter) {
	return env, &memcachedMeter{addr: env.MemcachedAddr}
}

func (m *memcachedMeter) Start(tb testing.TB) { m.before = m.read(tb) }

func (m *memcachedMeter) Stop(tb testing.TB) Counts {
	after := m.read(tb)
	c := Counts{"req": 0}
	for k, v := range after {
		if d := v - m.before[k]; d != 0 {
			c["req"] += d
			c["req:"+k] = d
		}
	}
	return c
}

// memcachedRequestStats are the stats that count requests, grouped.
var memcachedRequestStats = map[string]string{
	"cmd_get": "get", "cmd_set": "store", "cmd_touch": "touch", "cmd_flush": "flush",
	"incr_hits": "incr", "incr_misses": "incr", "decr_hits": "decr", "decr_misses": "decr",
	"delete_hits": "delete", "delete_misses": "delete",
}

func (m *memcachedMeter) read(tb testing.TB) map[string]float64 {
	tb.Helper()
	stats, err := memcachedCommand(m.addr, "stats")
	if err != nil {
		tb.Fatalf("memcached meter: %v", err)
	}
	out := map[string]float64{}
	for _, line := range stats {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "STAT" {
			continue
		}
		if group, ok := memcachedRequestStats[f[1]]; ok {
			v, _ := strconv.ParseFloat(f[2], 64)
			out[group] += v
		}
	}
	if len(out) == 0 {
		tb.Fatal("memcached meter: no request counters in stats")
	}
	return out
}

// memcachedCommand sends one text-protocol command and returns the lines
// of its answer up to END (or the single line of a one-line answer).
func memcachedCommand(addr, cmd string) ([]string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "%s\r\n", cmd); err != nil {
		return nil, err
	}
	var lines []string
	rd := bufio.NewReader(conn)
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return nil, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "END" {
			return lines, nil
		}
		lines = append(lines, line)
		if !strings.HasPrefix(line, "STAT ") {
			return lines, nil // a one-line answer (VERSION, ERROR)
		}
	}
}

// memcachedVersion returns the server's version.
func memcachedVersion(addr string) string {
	lines, err := memcachedCommand(addr, "version")
	if err != nil || len(lines) == 0 {
		return fmt.Sprint("unknown (", err, ")")
	}
	return strings.TrimPrefix(lines[0], "VERSION ")
}
