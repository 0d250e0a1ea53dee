package torture

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The lock model on small hand-made histories: what a TTL lock with tokens
// may and may not do, seen from its callers.
func TestLockModel(t *testing.T) {
	const ttl, slack = 100 * time.Millisecond, 10 * time.Millisecond
	ms := func(n int) int64 { return int64(n) * int64(time.Millisecond) }
	op := func(k Kind, lease uint64, tok uint64, call, ret int, out Outcome) Op {
		return Op{Kind: k, Key: 0, Lease: lease, Token: tok, Call: ms(call), Return: ms(ret), Outcome: out}
	}
	// queued marks a take by a queued waiter's ticket.
	queued := func(o Op) Op { o.Queued = true; return o }
	stall := []span{{ms(50), ms(350)}} // the server stood still for 300 ms
	cases := []struct {
		name   string
		ops    []Op
		stalls []span
		want   porcupine.CheckResult
	}{
		{"take, release, take", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Release, 1, 0, 2, 3, OK), op(Take, 2, 2, 4, 5, OK),
		}, nil, porcupine.Ok},
		{"take after expiry", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Take, 2, 2, 101, 102, OK),
		}, nil, porcupine.Ok},
		{"take before expiry", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Take, 2, 2, 50, 51, OK),
		}, nil, porcupine.Illegal},
		{"take before expiry, the holder's release concurrent", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Release, 1, 0, 40, 60, OK), op(Take, 2, 2, 50, 51, OK),
		}, nil, porcupine.Ok},
		{"token not above the last", []Op{
			op(Take, 1, 5, 0, 1, OK), op(Release, 1, 0, 2, 3, OK), op(Take, 2, 5, 4, 5, OK),
		}, nil, porcupine.Illegal},
		{"refresh extends", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Refresh, 1, 0, 60, 61, OK), op(Take, 2, 2, 0, 150, Refused),
		}, nil, porcupine.Ok},
		{"refresh after expiry succeeds", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Refresh, 1, 0, 200, 201, OK),
		}, nil, porcupine.Illegal},
		{"refresh after another took the key", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Take, 2, 2, 120, 121, OK), op(Refresh, 1, 0, 130, 131, OK),
		}, nil, porcupine.Illegal},
		{"refresh refused while surely held", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Refresh, 1, 0, 30, 31, Refused),
		}, nil, porcupine.Illegal},
		{"release of another's lock", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Take, 2, 2, 120, 121, OK), op(Release, 1, 0, 130, 131, OK),
		}, nil, porcupine.Illegal},
		{"refused while free", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Release, 1, 0, 2, 3, OK), op(Take, 0, 0, 4, 5, Refused),
		}, nil, porcupine.Illegal},
		{"a queued waiter refused while free (a waiter ahead of it)", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Release, 1, 0, 2, 3, OK), queued(op(Take, 0, 0, 4, 5, Refused)), queued(op(Take, 2, 2, 6, 7, OK)),
		}, nil, porcupine.Ok},
		{"a queued waiter's take while held", []Op{
			op(Take, 1, 1, 0, 1, OK), queued(op(Take, 2, 2, 4, 5, OK)),
		}, nil, porcupine.Illegal},
		{"refused while held", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Take, 0, 0, 4, 5, Refused),
		}, nil, porcupine.Ok},
		{"refused long after expiry", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Take, 0, 0, 200, 201, Refused),
		}, nil, porcupine.Illegal},
		{"refused long after expiry, the server stood still", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Take, 0, 0, 200, 201, Refused),
		}, stall, porcupine.Ok},
		{"an unknown take may hold the key", []Op{
			op(Take, 0, 0, 0, 1, Unknown), op(Take, 0, 0, 4, 5, Refused), op(Take, 2, 2, 6, 7, OK),
		}, nil, porcupine.Ok},
		{"an unknown release may have released", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Release, 1, 0, 2, 3, Unknown), op(Take, 2, 2, 4, 5, OK),
		}, nil, porcupine.Ok},
		{"an unknown refresh may extend", []Op{
			op(Take, 1, 1, 0, 1, OK), op(Refresh, 1, 0, 60, 61, Unknown), op(Take, 0, 0, 150, 151, Refused),
		}, nil, porcupine.Ok},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hist := linOps(c.ops, false)
			got := porcupine.CheckOperationsTimeout(lockModel(ttl, slack, c.stalls, false), hist, 10*time.Second)
			if got != c.want {
				t.Errorf("got %s, want %s", got, c.want)
			}
		})
	}
}

func TestServerAfter(t *testing.T) {
	stalls := []span{{10, 20}, {30, 40}}
	for _, c := range []struct{ from, d, want int64 }{
		{0, 5, 5},   // before any stall
		{0, 15, 25}, // across the first
		{0, 25, 45}, // across both
		{15, 3, 23}, // from inside the first
		{50, 5, 55}, // after both
	} {
		if got := serverAfter(stalls, c.from, c.d); got != c.want {
			t.Errorf("serverAfter(%d, %d) = %d, want %d", c.from, c.d, got, c.want)
		}
	}
}

// Operations that cross into a skipped span stay in the segment before it,
// their outcome unknown.
func TestSegments(t *testing.T) {
	ops := []Op{
		{Kind: Take, Lease: 1, Outcome: OK, Call: 0, Return: 5},
		{Kind: Take, Lease: 2, Outcome: OK, Call: 8, Return: 12},  // crosses into the span
		{Kind: Take, Outcome: Refused, Call: 9, Return: 11},       // crosses, changes nothing
		{Kind: Take, Lease: 3, Outcome: OK, Call: 15, Return: 16}, // in the span
		{Kind: Take, Lease: 4, Outcome: OK, Call: 30, Return: 31}, // after it
	}
	segs := segments(ops, []span{{10, 20}})
	if len(segs) != 2 || len(segs[0]) != 2 || len(segs[1]) != 1 {
		t.Fatalf("segments: %v", segs)
	}
	if segs[0][1].Lease != 2 || segs[0][1].Outcome != Unknown || segs[1][0].Lease != 4 {
		t.Errorf("segments: %v", segs)
	}
}
