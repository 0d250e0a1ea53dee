package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

func ExampleGuard_Middleware() {
	guard, err := idempotency.New(memlock.New(),
		// Scope keys by the authenticated user (here a header, for brevity).
		idempotency.WithScope(func(r *http.Request) string { return r.Header.Get("X-User") }))
	if err != nil {
		panic(err)
	}
	charges := 0
	checkout := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++ // the side effect
		w.Header().Set("Location", "/orders/42")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, `{"order":42}`)
	})
	h := guard.Middleware(checkout)

	post := func(body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/checkout", strings.NewReader(body))
		r.Header.Set("X-User", "alice")
		r.Header.Set("Idempotency-Key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	first := post(`{"cart":"c1"}`)
	fmt.Println(first.Code, first.Header().Get("Location"))
	again := post(`{"cart":"c1"}`) // the double click
	fmt.Println(again.Code, again.Header().Get("Location"), again.Header().Get("Idempotent-Replayed"))
	changed := post(`{"cart":"c2"}`) // same key, different request
	fmt.Println(changed.Code, changed.Header().Get("Content-Type"))
	fmt.Println("charges:", charges)
	// Output:
	// 201 /orders/42
	// 201 /orders/42 true
	// 422 application/problem+json
	// charges: 1
}

func ExampleDo() {
	// A Runner is the run-once core without the HTTP layer: it takes only
	// the options that apply to workers.
	runner, err := idempotency.NewRunner(memlock.New(), idempotency.WithNamespace("mailer/"))
	if err != nil {
		panic(err)
	}
	type Receipt struct{ Email string }
	sent := 0
	handle := func(ctx context.Context, msgID string) {
		var replayed bool
		r, err := idempotency.Do(ctx, runner, msgID, func(ctx context.Context) (Receipt, error) {
			sent++ // send the email
			return Receipt{Email: "sent to alice"}, nil
		}, idempotency.Replayed(&replayed))
		var busy *idempotency.InProgressError
		switch {
		case errors.As(err, &busy):
			fmt.Println("in progress elsewhere: nack, retry after", busy.RetryAfter)
		case err != nil:
			fmt.Println("failed: nack for redelivery:", err)
		default:
			fmt.Printf("ack %s: %s (replayed %v)\n", msgID, r.Email, replayed)
		}
	}
	ctx := context.Background()
	handle(ctx, "msg-1")
	handle(ctx, "msg-1") // redelivered
	fmt.Println("emails sent:", sent)
	// Output:
	// ack msg-1: sent to alice (replayed false)
	// ack msg-1: sent to alice (replayed true)
	// emails sent: 1
}

func ExampleMarkTerminal() {
	guard, _ := idempotency.New(memlock.New(), idempotency.WithScope(func(*http.Request) string { return "all" }))
	attempts := 0
	pay := guard.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts++
		// The card was declined: a final answer for this key, not a
		// transient failure to retry.
		idempotency.MarkTerminal(w)
		http.Error(w, "card declined", http.StatusPaymentRequired)
	}))
	for range 2 {
		r := httptest.NewRequest(http.MethodPost, "/pay", nil)
		r.Header.Set("Idempotency-Key", "pay-1")
		w := httptest.NewRecorder()
		pay.ServeHTTP(w, r)
		body, _ := io.ReadAll(w.Body)
		fmt.Print(w.Code, " ", string(body))
	}
	fmt.Println("attempts:", attempts)
	// Output:
	// 402 card declined
	// 402 card declined
	// attempts: 1
}

// Once runs a cron job once per period however many instances schedule it:
// here three instances share one store, and the nightly report is sent once.
func ExampleOnce() {
	store := memlock.New() // in production a networked backend all instances reach
	sent := 0
	for instance := range 3 {
		runner, err := idempotency.NewRunner(store)
		if err != nil {
			panic(err)
		}
		ran, err := idempotency.Once(context.Background(), runner, "nightly-report", 24*time.Hour,
			func(ctx context.Context, day time.Time) error {
				sent++ // send the report for the day that starts at day
				return nil
			})
		fmt.Printf("instance %d ran: %v, err: %v\n", instance, ran, err)
	}
	fmt.Println("reports sent:", sent)
	// Output:
	// instance 0 ran: true, err: <nil>
	// instance 1 ran: false, err: <nil>
	// instance 2 ran: false, err: <nil>
	// reports sent: 1
}
