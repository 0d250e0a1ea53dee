package pglock_test

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"net/http"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// orders creates an order at most once per Idempotency-Key: the order and
// the response that duplicates replay are committed in one transaction,
// so no crash can leave one without the other.
//
//	CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL);
type orders struct {
	pool   *pgxpool.Pool
	locker *pglock.Locker
	ttl    time.Duration // how long the first request may take
}

type order struct {
	ID   int64  `json:"id"`
	Item string `json:"item"`
}

func (h *orders) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	item := r.URL.Query().Get("item")
	if key == "" || item == "" {
		http.Error(w, "need an Idempotency-Key header and an item", http.StatusBadRequest)
		return
	}
	// Scope keys by caller in a real service (the authenticated user), so
	// that one caller can never read another's response.
	lease, record, err := h.locker.Claim(r.Context(), "orders/"+key, h.ttl)
	switch {
	case errors.Is(err, lock.ErrNotAcquired):
		w.Header().Set("Retry-After", "1")
		http.Error(w, "a request with this key is in progress", http.StatusConflict)
		return
	case err != nil:
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	case record != nil: // done before: replay the stored response
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Idempotent-Replayed", "true")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(record)
		return
	}

	var body []byte
	err = pgx.BeginFunc(r.Context(), h.pool, func(tx pgx.Tx) error {
		o := order{Item: item}
		if err := tx.QueryRow(r.Context(), "INSERT INTO orders (item) VALUES ($1) RETURNING id", item).Scan(&o.ID); err != nil {
			return err
		}
		body, _ = json.Marshal(o)
		// The response is stored in the same transaction; if the lease was
		// lost meanwhile this fails and the order is rolled back.
		return h.locker.CompleteTx(r.Context(), tx, lease, body, 24*time.Hour)
	})
	if err != nil {
		// Nothing was committed (or, if the commit's answer was lost, the
		// release finds the record and changes nothing): the key may be
		// retried.
		_ = lease.Release(context.WithoutCancel(r.Context()))
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(body)
}

// ExampleLocker_CompleteTx serves POST /orders with an idempotency record
// committed in the same transaction as the order.
func ExampleLocker_CompleteTx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	locker, err := pglock.New(pool)
	if err != nil {
		log.Fatal(err) // an invalid option
	}
	defer locker.Close()

	http.Handle("POST /orders", &orders{pool: pool, locker: locker, ttl: 30 * time.Second})
	log.Fatal(http.ListenAndServe("127.0.0.1:8080", nil))
}
