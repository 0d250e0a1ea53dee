// Command worker is a queue consumer made safe against redelivery with
// idempotency.Do: claim the message's key, process, complete (store the
// result), and only then ack. The in-memory queue below behaves like SQS or
// a RabbitMQ queue with a visibility timeout: a message that is not acked
// in time is delivered again, and the producer publishes some messages
// twice. The side effect (sending a receipt email) still happens exactly
// once per message.
//
//	go run ./examples/worker [-backend mem://]
//
// The exit status is 1 if any message's side effect did not happen exactly
// once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/idempotency"

	// memlock registers mem:// for lock.Open; a networked backend's URL
	// needs that backend's module imported the same way.
	_ "github.com/idemlock/lock/backends/memlock"
)

func main() {
	backend := flag.String("backend", "mem://", "lock backend URL")
	flag.Parse()
	os.Exit(run(*backend, os.Stdout))
}

// ---------------------------------------------------------------- queue

type message struct {
	ID   string
	Body string
}

type delivery struct {
	msg     message
	attempt int
	timer   *time.Timer // redelivers the message if it is not acked in time
	done    bool
}

// queue redelivers every message that is not acked within the visibility
// timeout, and messages that are nacked after their delay.
type queue struct {
	visibility time.Duration
	ready      chan *delivery
	mu         sync.Mutex
	pending    int // messages not acked yet
	drained    chan struct{}
	redelivers atomic.Int64
}

func newQueue(visibility time.Duration) *queue {
	return &queue{visibility: visibility, ready: make(chan *delivery, 1024), drained: make(chan struct{})}
}

func (q *queue) publish(m message) {
	q.mu.Lock()
	q.pending++
	q.mu.Unlock()
	q.ready <- &delivery{msg: m}
}

// receive hands out the next delivery and starts its visibility timer.
func (q *queue) receive(ctx context.Context) (*delivery, bool) {
	select {
	case d := <-q.ready:
		q.mu.Lock()
		d.attempt++
		d.timer = time.AfterFunc(q.visibility, func() { q.redeliver(d) })
		q.mu.Unlock()
		return d, true
	case <-ctx.Done():
		return nil, false
	}
}

func (q *queue) ack(d *delivery) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if d.done {
		return
	}
	d.done = true
	d.timer.Stop()
	q.pending--
	if q.pending == 0 {
		close(q.drained)
	}
}

// nack puts the message back after delay.
func (q *queue) nack(d *delivery, delay time.Duration) {
	q.mu.Lock()
	stopped := d.timer.Stop()
	q.mu.Unlock()
	if stopped {
		time.AfterFunc(delay, func() { q.redeliver(d) })
	}
}

func (q *queue) redeliver(d *delivery) {
	q.mu.Lock()
	if d.done {
		q.mu.Unlock()
		return
	}
	// A redelivery is a new delivery of the same message.
	nd := &delivery{msg: d.msg, attempt: d.attempt}
	d.done = true // the old delivery can no longer be acked
	q.mu.Unlock()
	q.redelivers.Add(1)
	q.ready <- nd
}

// ---------------------------------------------------------------- consumer

// mailer is the side effect: it must happen once per message.
type mailer struct {
	mu   sync.Mutex
	sent map[string]int
}

func (m *mailer) send(id string) {
	m.mu.Lock()
	m.sent[id]++
	m.mu.Unlock()
}

type stats struct {
	deliveries, processed, replays, inProgress, transient, crashes atomic.Int64
}

type receipt struct {
	Message string `json:"message"`
	Email   string `json:"email"`
}

var errTransient = errors.New("SMTP server busy")

func run(backendURL string, out io.Writer) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := lock.Open(ctx, backendURL)
	if err != nil {
		fmt.Fprintf(out, "worker: %v\n", err)
		return 2
	}
	defer b.Close()
	run := fmt.Sprint(time.Now().UnixNano()) // keys unique to this run on a shared server
	g, err := idempotency.NewRunner(b,
		idempotency.WithNamespace("worker-example/"+run),
		idempotency.WithRetention(time.Hour),
		idempotency.WithRetryAfter(100*time.Millisecond),
		idempotency.WithMaxRetryAfter(100*time.Millisecond), // redeliver soon, whatever the holder's lease has left
		idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Fprintf(out, "worker: %v\n", err)
		return 2
	}

	q := newQueue(300 * time.Millisecond)
	m := &mailer{sent: map[string]int{}}
	var st stats
	var failOnce, crashOnce sync.Map

	const n = 20
	for i := range n {
		msg := message{ID: fmt.Sprintf("order-%02d", i), Body: fmt.Sprintf("receipt for order %d", i)}
		q.publish(msg)
		if i%4 == 0 {
			q.publish(msg) // the producer retried: a duplicate
		}
		switch i % 5 {
		case 1:
			failOnce.Store(msg.ID, true) // the first attempt fails
		case 2:
			crashOnce.Store(msg.ID, true) // the consumer dies after processing, before the ack
		}
	}
	fmt.Fprintf(out, "idemlock worker story on %s: %d messages, %d of them published twice\n", backendURL, n, (n+3)/4)

	process := func(ctx context.Context, msg message) (receipt, error) {
		if _, first := failOnce.LoadAndDelete(msg.ID); first {
			st.transient.Add(1)
			return receipt{}, errTransient // not Permanent: the key is released for the redelivery
		}
		if msg.ID == "order-03" {
			// Slower than the visibility timeout: the queue redelivers the
			// message while it is being processed.
			select {
			case <-time.After(500 * time.Millisecond):
			case <-ctx.Done():
				return receipt{}, ctx.Err() // lease lost: stop touching the world
			}
		}
		m.send(msg.ID)
		st.processed.Add(1)
		return receipt{Message: msg.ID, Email: "sent"}, nil
	}

	consume := func(ctx context.Context) {
		for {
			d, ok := q.receive(ctx)
			if !ok {
				return
			}
			st.deliveries.Add(1)
			var replayed bool
			_, err := idempotency.Do(ctx, g, d.msg.ID, func(ctx context.Context) (receipt, error) {
				return process(ctx, d.msg)
			}, idempotency.WithPayload([]byte(d.msg.Body)), idempotency.Replayed(&replayed))
			var inProgress *idempotency.InProgressError
			switch {
			case errors.As(err, &inProgress):
				// Another consumer has it: come back later, do not ack.
				st.inProgress.Add(1)
				q.nack(d, inProgress.RetryAfter)
			case err != nil:
				q.nack(d, 50*time.Millisecond) // processed nothing: redeliver
			default:
				if replayed {
					st.replays.Add(1)
				}
				if _, crash := crashOnce.LoadAndDelete(d.msg.ID); crash {
					st.crashes.Add(1)
					continue // the result is stored, but the ack never happens
				}
				q.ack(d)
			}
		}
	}

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { consume(ctx) })
	}
	select {
	case <-q.drained:
	case <-time.After(30 * time.Second):
		fmt.Fprintln(out, "worker: the queue did not drain in 30s")
	}
	cancel()
	wg.Wait()

	fmt.Fprintf(out, "\n   deliveries          %d (%d redeliveries after a missing ack or a nack)\n", st.deliveries.Load(), q.redelivers.Load())
	fmt.Fprintf(out, "   processed           %d (the side effect ran)\n", st.processed.Load())
	fmt.Fprintf(out, "   replays             %d (duplicate or redelivered message: stored result, acked, nothing re-run)\n", st.replays.Load())
	fmt.Fprintf(out, "   in progress         %d (delivered again while another consumer held it: nacked with RetryAfter)\n", st.inProgress.Load())
	fmt.Fprintf(out, "   transient failures  %d (error: key released, message redelivered and processed)\n", st.transient.Load())
	fmt.Fprintf(out, "   crashes before ack  %d (result already stored: the redelivery replayed it)\n", st.crashes.Load())
	bad := 0
	for i := range n {
		id := fmt.Sprintf("order-%02d", i)
		if got := m.sent[id]; got != 1 {
			fmt.Fprintf(out, "   %s: sent %d times\n", id, got)
			bad++
		}
	}
	if bad > 0 {
		fmt.Fprintf(out, "\nFAIL: %d messages did not have their side effect exactly once\n", bad)
		return 1
	}
	fmt.Fprintf(out, "\nOK: every message's email was sent exactly once\n")
	return 0
}
