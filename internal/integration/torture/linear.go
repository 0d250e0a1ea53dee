package torture

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The linearizability check judges the history of each key against a
// sequential specification of a lock with a TTL and fencing tokens, with
// porcupine. Time enters the specification through the operations'
// intervals: an operation takes effect at some moment between its call and
// its return, so a lease taken or refreshed by a call at c lasts at least
// until c+TTL (servers never expire early) and, if its reply came at r, at
// most until r+TTL+slack. An operation whose outcome is unknown may take
// effect at any moment after its call, or never.

// linState is the state of one key. It is a comparable value.
type linState struct {
	holder uint64 // the holding lease, 0 when free, phantom for an unknown take
	token  uint64 // the highest token granted
	expMin int64  // the holder has not expired before this moment
	expMax int64  // the holder has expired by this moment
}

// phantom is the holder after a take whose outcome is unknown: some lease
// no worker has.
const phantom = math.MaxUint64

const forever = math.MaxInt64

type linInput struct {
	kind  Kind
	lease uint64
	call  int64
	err   string // an unknown outcome's error, for the excerpt
}

type linOutput struct {
	outcome Outcome
	token   uint64
	ret     int64
}

// lockModel returns the specification for leases of ttl that a server may
// expire up to slack late, and later still by the time it stood still in
// the stalls spans (paused, restarting, electing a leader): its expiry
// clock does not run then. With midway, the history starts at some moment
// of a run: the key may then be held by anyone, for any time.
func lockModel(ttl, slack time.Duration, stalls []span, midway bool) porcupine.Model {
	t, s := int64(ttl), int64(slack)
	// latest is when a lease whose last renewal returned at ret has
	// expired at the latest.
	latest := func(ret int64) int64 { return serverAfter(stalls, ret, t+s) }
	step := func(state, input, output any) []any {
		st := state.(linState)
		in, out := input.(linInput), output.(linOutput)
		// mayBeFree: the holder may have expired by the return.
		mayBeFree := st.holder == 0 || out.ret >= st.expMin
		// mayHold: lease still held at some moment after the call.
		mayHold := func(l uint64) bool { return st.holder == l && in.call < st.expMax }
		switch in.kind {
		case Take:
			switch out.outcome {
			case OK:
				if !mayBeFree || out.token <= st.token {
					return nil
				}
				return []any{linState{holder: in.lease, token: out.token, expMin: in.call + t, expMax: latest(out.ret)}}
			case Refused:
				if st.holder != 0 && in.call < st.expMax {
					return []any{st}
				}
				return nil
			default:
				// Maybe taken at any moment after the call, by a lease
				// nobody has, which may also be gone at any moment: the
				// backend may have given it back on its error path.
				return []any{st, linState{holder: phantom, token: st.token, expMin: in.call, expMax: forever}}
			}
		case Refresh, Release:
			switch out.outcome {
			case OK:
				if !mayHold(in.lease) {
					return nil
				}
				if in.kind == Release {
					return []any{linState{token: st.token}}
				}
				return []any{linState{holder: in.lease, token: st.token, expMin: max(st.expMin, in.call+t), expMax: latest(out.ret)}}
			case Refused:
				// Not held: another lease holds the key, or this one may
				// have expired by the return.
				if st.holder != in.lease || out.ret >= st.expMin {
					return []any{st}
				}
				return nil
			default:
				switch {
				case st.holder != in.lease:
					return []any{st}
				case in.kind == Release:
					return []any{st, linState{token: st.token}}
				}
				// A refresh applied, if at all, before the lease expired:
				// it may last a TTL longer. That state allows everything
				// the unchanged one does.
				next := st
				next.expMax = latest(st.expMax)
				return []any{next}
			}
		}
		return nil
	}
	nm := porcupine.NondeterministicModel{
		Init: func() []any {
			if midway {
				return []any{linState{holder: phantom, expMax: forever}}
			}
			return []any{linState{}}
		},
		Step: step,
		Hash: func(state any) uint64 {
			s := state.(linState)
			return s.holder*31 ^ s.token*131 ^ uint64(s.expMin)*7 ^ uint64(s.expMax)
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(linInput), output.(linOutput)
			switch {
			case in.kind == Take && out.outcome == OK:
				return fmt.Sprintf("take -> lease %x token %d", in.lease, out.token)
			case in.kind == Take:
				return "take -> " + out.outcome.String()
			}
			return fmt.Sprintf("%s lease %x -> %s", in.kind, in.lease, out.outcome)
		},
		DescribeState: func(state any) string {
			s := state.(linState)
			switch s.holder {
			case 0:
				return fmt.Sprintf("free (last token %d)", s.token)
			case phantom:
				return fmt.Sprintf("maybe held by an unknown take (last token %d)", s.token)
			}
			return fmt.Sprintf("held by %x (token %d), expires in [%v, %v]", s.holder, s.token, time.Duration(s.expMin), time.Duration(s.expMax))
		},
	}
	return nm.ToModel()
}

// serverAfter returns the moment d of a server's running time after from,
// skipping the spans in which it stood still (sorted by start).
func serverAfter(stalls []span, from, d int64) int64 {
	t := from
	for _, st := range stalls {
		if st.to <= t {
			continue
		}
		if st.from > t {
			if st.from-t >= d {
				break
			}
			d -= st.from - t
		}
		t = st.to
	}
	return addSat(t, d)
}

func addSat(a, b int64) int64 {
	if a > forever-b {
		return forever
	}
	return a + b
}

// linOps turns one segment of a key's recorded operations into porcupine's
// form. An operation with an unknown outcome may take effect at any moment
// after its call: its return is put at the end of the segment. A segment
// that starts midway leaves out the refreshes and releases of leases taken
// before it. A queued waiter's refused take is left out: it may be refused
// while the key is free, because another waiter is ahead of it.
func linOps(ops []Op, midway bool) []porcupine.Operation {
	end := int64(0)
	for _, op := range ops {
		end = max(end, op.Return)
	}
	taken := map[uint64]bool{}
	out := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		switch {
		case op.Kind == Take && op.Queued && op.Outcome == Refused:
			continue // says nothing of the key: a waiter may be ahead
		case op.Kind == Take:
			taken[op.Lease] = true
		case midway && !taken[op.Lease]:
			continue
		}
		ret := op.Return
		if op.Outcome == Unknown {
			ret = end + 1
		}
		out = append(out, porcupine.Operation{
			ClientId: op.Worker,
			Input:    linInput{kind: op.Kind, lease: op.Lease, call: op.Call, err: op.Err},
			Call:     op.Call,
			Output:   linOutput{outcome: op.Outcome, token: op.Token, ret: op.Return},
			Return:   ret,
		})
	}
	return out
}

// LinearResult is the linearizability verdict on one key's history.
type LinearResult struct {
	Key    int
	Ops    int
	Result porcupine.CheckResult
	// At is about when the history stops being linearizable: the call of
	// the first operation after the longest linearizable prefix found.
	At int64
	// First describes the operation called at At, the first porcupine
	// could not place.
	First string
	File  string // the visualisation of a failing history
	Took  time.Duration
}

// span is an interval of a run's clock.
type span struct{ from, to int64 }

// checkLinear checks each key's history, with timeout per segment, and
// writes a visualisation of each failing one into dir (if not empty). The
// history is cut at the spans of skip (faults documented to break
// linearizability, such as a restart that loses the server's data): the
// operations that overlap one are not judged, and each segment after one
// starts from a state the model leaves open.
func checkLinear(ops []Op, ttl, slack time.Duration, stalls, skip []span, timeout time.Duration, dir, name string) []LinearResult {
	byKey := map[int][]Op{}
	for _, op := range ops {
		byKey[op.Key] = append(byKey[op.Key], op)
	}
	keys := make([]int, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	sort.Slice(skip, func(i, j int) bool { return skip[i].from < skip[j].from })
	sort.Slice(stalls, func(i, j int) bool { return stalls[i].from < stalls[j].from })
	var out []LinearResult
	for _, k := range keys {
		lr := LinearResult{Key: k, Result: porcupine.Ok}
		for i, seg := range segments(byKey[k], skip) {
			hist := linOps(seg, i > 0)
			model := lockModel(ttl, slack, stalls, i > 0)
			start := time.Now()
			res, info := porcupine.CheckOperationsVerbose(model, hist, timeout)
			lr.Took += time.Since(start)
			lr.Ops += len(hist)
			switch {
			case res == porcupine.Illegal && lr.Result != porcupine.Illegal:
				lr.Result = porcupine.Illegal
				lr.At = stuckAt(hist, info)
				for _, op := range hist {
					if op.Call == lr.At {
						lr.First = describe(op)
						break
					}
				}
				if dir != "" {
					lr.File = visualise(lockModel(ttl, slack, stalls, i > 0), lockModel(ttl, slack, stalls, true), hist, lr.At, timeout, dir, fmt.Sprintf("%s-key%d", name, k))
				}
			case res == porcupine.Unknown && lr.Result == porcupine.Ok:
				lr.Result = porcupine.Unknown
			}
		}
		out = append(out, lr)
	}
	return out
}

// segments cuts one key's operations at the skipped spans. An operation
// called in a span is left out. One called before a span and returning in
// or after it may have taken effect before the span or not: it stays in the
// segment before, its outcome made unknown (a refused take, which changes
// nothing, is left out).
func segments(ops []Op, skip []span) [][]Op {
	segs := make([][]Op, len(skip)+1)
	for _, op := range ops {
		i := 0
		for i < len(skip) && op.Call > skip[i].to {
			i++
		}
		if i < len(skip) && op.Call >= skip[i].from {
			continue // called in the skipped span
		}
		if i < len(skip) && op.Return >= skip[i].from && op.Outcome != Unknown {
			if op.Kind == Take && op.Outcome == Refused {
				continue
			}
			op.Outcome, op.Err = Unknown, "overlaps "+fmt.Sprint(time.Duration(skip[i].from))
		}
		segs[i] = append(segs[i], op)
	}
	return segs
}

// stuckAt returns the call time of the earliest operation left out of the
// longest linearizable prefix porcupine found.
func stuckAt(hist []porcupine.Operation, info porcupine.LinearizationInfo) int64 {
	partials := info.PartialLinearizations()
	best := 0
	var in map[int]bool
	for _, part := range partials {
		for _, lin := range part {
			if len(lin) >= best {
				best = len(lin)
				in = map[int]bool{}
				for _, i := range lin {
					in[i] = true
				}
			}
		}
	}
	at := int64(forever)
	for i, op := range hist {
		if !in[i] && op.Call < at {
			at = op.Call
		}
	}
	if at == forever {
		return 0
	}
	return at
}

// visualise writes porcupine's HTML view of a failing history. A long
// history is cut to a window of operations called shortly before and after
// the failure: started midway, with the operations on leases taken before
// it left out, if that window still fails; else to the prefix that ends
// with the window.
func visualise(model, midway porcupine.Model, hist []porcupine.Operation, at int64, timeout time.Duration, dir, name string) string {
	const before, after = 300, 30
	full := hist
	if len(hist) > before+after {
		sorted := append([]porcupine.Operation(nil), hist...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].Call < sorted[j].Call })
		cut := sort.Search(len(sorted), func(i int) bool { return sorted[i].Call > at })
		lo, hi := max(0, cut-before), min(len(sorted), cut+after)
		inWindow := map[uint64]bool{}
		var window []porcupine.Operation
		for _, op := range sorted[lo:hi] {
			in := op.Input.(linInput)
			if in.kind == Take {
				inWindow[in.lease] = true
			} else if !inWindow[in.lease] {
				continue
			}
			window = append(window, op)
		}
		if porcupine.CheckOperationsTimeout(midway, window, timeout) == porcupine.Illegal {
			model, hist = midway, window
		} else {
			hist = sorted[:hi]
		}
	}
	_, info := porcupine.CheckOperationsVerbose(model, hist, timeout)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ""
	}
	path := filepath.Join(dir, name+".html")
	if err := porcupine.VisualizePath(model, info, path); err != nil {
		return ""
	}
	_ = os.WriteFile(filepath.Join(dir, name+".txt"), []byte(excerpt(full, at)), 0o644)
	return path
}

// excerpt lists the operations called around a failure, with their times
// relative to it, as text.
func excerpt(hist []porcupine.Operation, at int64) string {
	const before, after = 60, 20
	sorted := append([]porcupine.Operation(nil), hist...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Call < sorted[j].Call })
	cut := sort.Search(len(sorted), func(i int) bool { return sorted[i].Call >= at })
	var b strings.Builder
	fmt.Fprintf(&b, "operations called around the first one porcupine could not linearize (marked >), times relative to its call\n")
	for i := max(0, cut-before); i < min(len(sorted), cut+after); i++ {
		op := sorted[i]
		out := op.Output.(linOutput)
		mark := " "
		if i == cut {
			mark = ">"
		}
		fmt.Fprintf(&b, "%s [%+10.6fs, %+10.6fs] worker %-3d %s\n", mark,
			time.Duration(op.Call-at).Seconds(), time.Duration(out.ret-at).Seconds(), op.ClientId, describe(op))
	}
	return b.String()
}

// describe says what an operation did, for excerpts and examples.
func describe(op porcupine.Operation) string {
	in, out := op.Input.(linInput), op.Output.(linOutput)
	what := fmt.Sprintf("%s lease %x -> %s", in.kind, in.lease, out.outcome)
	if in.kind == Take && out.outcome == OK {
		what += fmt.Sprintf(" token %d", out.token)
	}
	if in.err != "" {
		what += " (" + in.err + ")"
	}
	return what
}
