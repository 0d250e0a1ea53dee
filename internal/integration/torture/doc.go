// Package torture is idemlock's torture harness: long contended histories
// under faults, judged by a fenced resource, a set of checkers and a
// linearizability check.
//
// A [Run] starts workers, each with a Locker (a client) of its own, in this
// process and in worker processes (the same binary started again, see
// [IsChild] and [ChildMain]). Each worker takes a random key of a few with
// lock.Acquire, keeps it with lock.KeepAlive, writes (key, token, worker,
// sequence) to a fenced [Resource] inside its critical section and
// releases it. Every TryAcquire, Refresh and Release is recorded with its
// call and return time on a [Clock] all processes share, and so is every
// take's critical section. Faults ([Fault]) are injected on a schedule and
// healed: this package brings the faults of the clients themselves
// ([StallHolder], [PauseWorkerProcess]); the servers' faults come from the
// caller (internal/faults on a private set of servers, in this package's
// tests). Idempotency clients ([IdemLoad]) can run beside the workers,
// sending checkouts with retries, timeouts and disconnects through
// idempotency.Guard to a handler that charges a provider.
//
// [Check] judges a run's history, each check separately: fenced safety,
// unfenced exclusion, token order, loss detection, liveness after each
// heal, linearizability (porcupine, with a model of a lock with a TTL and
// fencing tokens) and, for the idempotency clients, the effect count. A
// violation under a fault whose documented caveat covers that check is
// counted apart ([Violation].Caveat). [Summarize] and [WriteReport] make
// RELIABILITY.md of it (internal/integration/cmd/torture, `make torture`).
//
// TestTorture is the matrix, every backend on its single server and its
// cluster topology: short by default (`make test`, each fault once) and
// long with -torture.long. TestHarnessBites shows that the checks catch
// deliberately broken Lockers.
package torture
