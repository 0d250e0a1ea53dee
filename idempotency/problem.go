package idempotency

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Problem types of the middleware's own error responses (RFC 9457). Each
// URI is this package's documentation of the constant.
const (
	problemBase = "https://pkg.go.dev/github.com/idemlock/lock/idempotency#"
	// ProblemKeyMissing: 400, the route requires an Idempotency-Key.
	ProblemKeyMissing = problemBase + "ProblemKeyMissing"
	// ProblemKeyInvalid: 400, the key is empty, a list, not printable ASCII
	// or longer than 255 bytes.
	ProblemKeyInvalid = problemBase + "ProblemKeyInvalid"
	// ProblemBodyUnreadable: 400, the request body could not be read.
	ProblemBodyUnreadable = problemBase + "ProblemBodyUnreadable"
	// ProblemInProgress: 409 with Retry-After, a request with this key is
	// being processed.
	ProblemInProgress = problemBase + "ProblemInProgress"
	// ProblemBodyTooLarge: 413, the body is over the fingerprint cap.
	ProblemBodyTooLarge = problemBase + "ProblemBodyTooLarge"
	// ProblemKeyReused: 422, the key was used with a different request
	// (method, route, query or body).
	ProblemKeyReused = problemBase + "ProblemKeyReused"
	// ProblemNotReplayable: 422, the first request with this key completed
	// but its response was not stored (too large, streamed or hijacked); it
	// was not repeated.
	ProblemNotReplayable = problemBase + "ProblemNotReplayable"
	// ProblemStoreUnavailable: 503, the Store could not be reached and the
	// route fails closed.
	ProblemStoreUnavailable = problemBase + "ProblemStoreUnavailable"
	// ProblemRecordUnreadable: 500, the stored record could not be decoded.
	ProblemRecordUnreadable = problemBase + "ProblemRecordUnreadable"
	// ProblemScopeMissing: 403, the Guard has a scope ([WithScope]) and it
	// named no caller for this request; nothing was claimed or run.
	ProblemScopeMissing = problemBase + "ProblemScopeMissing"
	// ProblemRequestEnded: 503 with Retry-After, the request's context ended
	// (the client left, a server deadline passed) before the request was
	// processed; the key is free and a retry with it runs the request.
	ProblemRequestEnded = problemBase + "ProblemRequestEnded"
	// ProblemShuttingDown: 503 with Retry-After, the Guard is shutting
	// down ([Guard.Shutdown]); nothing was claimed or run, and a retry
	// (on another instance) runs the request.
	ProblemShuttingDown = problemBase + "ProblemShuttingDown"
)

// Problem is an RFC 9457 problem details object, as the middleware writes
// it with Content-Type application/problem+json.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// problem sends a problem response, with the type URI [WithProblemTypes]
// maps typ to. It is never stored: it is written either before a key is
// claimed or after the claim was answered.
func (c *config) problem(w http.ResponseWriter, status int, typ, title, detail string, retryAfter time.Duration) {
	if c.problemType != nil {
		if typ = c.problemType(typ); typ == "" {
			typ = "about:blank"
		}
	}
	b, err := json.Marshal(Problem{Type: typ, Title: title, Status: status, Detail: detail})
	if err != nil {
		b = []byte(`{"type":"about:blank","status":500}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((retryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
