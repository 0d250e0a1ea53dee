package idempotency

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The record format, version 1. All integers are unsigned varints unless
// sized; a record is
//
//	magic    "IDR"                 3 bytes
//	version  1                     1 byte
//	kind     1 = HTTP, 2 = worker  1 byte
//	flags    bit 0: tombstone, bit 1: stored error (worker)   1 byte
//	reason   why a tombstone was stored (see TombstoneReason)  1 byte
//	fp       request fingerprint   32 bytes
//	status   HTTP status, 0 for workers                        uvarint
//	nhdr     header field lines that follow                    uvarint
//	  name   uvarint length + bytes (canonical form)
//	  value  uvarint length + bytes
//	body     uvarint length + bytes (HTTP body, worker value or error text)
//
// and nothing after. An HTTP record's status is a final status (200–999),
// or 0 in a tombstone; a worker record's is 0. A worker record's header
// lines, named "Is", carry the texts of the errors a stored error wrapped
// (see [StoredError]). What a decoder would refuse is refused by the
// encoder too, by the same check (record.check), so whatever is stored
// replays: a response beyond these limits is stored as a tombstone
// instead. A decoder rejects anything else with a [*RecordError];
// a record of a newer version is rejected the same way (an old binary never
// guesses at a newer layout), so rolling upgrades should add a version only
// with a reader for it deployed first.
const (
	recordMagic   = "IDR"
	recordVersion = 1
	fpSize        = 32
	headerSize    = len(recordMagic) + 4 + fpSize

	kindHTTP   = 1
	kindWorker = 2

	flagTombstone   = 1 << 0
	flagStoredError = 1 << 1
	knownFlags      = flagTombstone | flagStoredError

	// maxRecordHeaders bounds the header lines of a record, for the
	// encoder and the decoder alike (it bounds what a decoder allocates).
	maxRecordHeaders = 256
	// chainHeader names the header lines of a worker record that carry the
	// texts of a stored error's chain.
	chainHeader = "Is"
)

// TombstoneReason says why a completed request's response was not stored.
type TombstoneReason uint8

// Reasons for a tombstone.
const (
	TombstoneNone       TombstoneReason = iota
	TombstoneOversize                   // the response was larger than the cap
	TombstoneStreamed                   // the handler flushed: a stream is not replayable
	TombstoneHijacked                   // the handler took the connection over
	TombstoneEncoding                   // the result could not be encoded
	TombstoneRefused                    // the Store refused the record (too large for it)
	TombstoneLimits                     // the response is beyond a record's limits (header lines)
	TombstoneTrailers                   // the response declared trailers, which are not stored
	TombstoneIncomplete                 // the handler stopped before writing the Content-Length it declared
	maxTombstoneReason  = TombstoneIncomplete
)

func (r TombstoneReason) String() string {
	switch r {
	case TombstoneNone:
		return "none"
	case TombstoneOversize:
		return "the response was larger than the replay cap"
	case TombstoneStreamed:
		return "the response was streamed (flushed) and cannot be replayed"
	case TombstoneHijacked:
		return "the handler hijacked the connection"
	case TombstoneEncoding:
		return "the result could not be encoded"
	case TombstoneRefused:
		return "the store could not hold the response (too large for the backend)"
	case TombstoneLimits:
		return fmt.Sprintf("the response has more than %d header lines, more than a stored response replays", maxRecordHeaders)
	case TombstoneTrailers:
		return "the response has trailers, which are not stored"
	case TombstoneIncomplete:
		return "the handler stopped (panicked) before writing the whole body it declared in Content-Length"
	}
	return fmt.Sprintf("reason %d", uint8(r))
}

// ErrBadRecord is matched by every error about a stored record that cannot
// be decoded; the error is a [*RecordError].
var ErrBadRecord = errors.New("idempotency: bad stored record")

// RecordError describes a stored record that could not be decoded.
type RecordError struct {
	Reason string
}

func (e *RecordError) Error() string { return "idempotency: bad stored record: " + e.Reason }

// Unwrap makes errors.Is(err, ErrBadRecord) true.
func (e *RecordError) Unwrap() error { return ErrBadRecord }

// record is a decoded completed key.
type record struct {
	kind      uint8
	tombstone bool
	stored    bool // worker: body is a stored error's text
	reason    TombstoneReason
	fp        [fpSize]byte
	status    int
	nhdr      int    // header field lines in hdr
	hdr       []byte // encoded header lines: (uvarint len, name, uvarint len, value)*
	body      []byte
}

// appendHeaderLine encodes one header field line for record.hdr.
func appendHeaderLine(dst []byte, name, value string) []byte {
	dst = appendBytes(dst, name)
	return appendBytes(dst, value)
}

// eachHeader calls fn for every header line of a decoded or built record.
// The slices alias the record.
func (r *record) eachHeader(fn func(name, value []byte)) {
	d := decoder{b: r.hdr}
	for range r.nhdr {
		name := d.bytes("header name")
		value := d.bytes("header value")
		if d.err != nil {
			return // decodeRecord validated hdr; a built one is well formed
		}
		fn(name, value)
	}
}

// appendRecord encodes r after dst.
func appendRecord(dst []byte, r *record) []byte {
	if dst == nil {
		dst = make([]byte, 0, headerSize+2*binary.MaxVarintLen64+len(r.hdr)+len(r.body))
	}
	dst = append(dst, recordMagic...)
	var flags byte
	if r.tombstone {
		flags |= flagTombstone
	}
	if r.stored {
		flags |= flagStoredError
	}
	dst = append(dst, recordVersion, r.kind, flags, byte(r.reason))
	dst = append(dst, r.fp[:]...)
	dst = binary.AppendUvarint(dst, uint64(r.status))
	dst = binary.AppendUvarint(dst, uint64(r.nhdr))
	dst = append(dst, r.hdr...)
	dst = binary.AppendUvarint(dst, uint64(len(r.body)))
	return append(dst, r.body...)
}

func appendBytes[S string | []byte](dst []byte, s S) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decodeRecord decodes b. It never panics and never allocates more than a
// small multiple of len(b).
func decodeRecord(b []byte) (*record, error) {
	if len(b) < headerSize {
		return nil, &RecordError{Reason: fmt.Sprintf("%d bytes, shorter than the %d-byte header", len(b), headerSize)}
	}
	if string(b[:3]) != recordMagic {
		return nil, &RecordError{Reason: "not an idempotency record (bad magic)"}
	}
	if b[3] != recordVersion {
		return nil, &RecordError{Reason: fmt.Sprintf("unknown version %d (this build reads version %d)", b[3], recordVersion)}
	}
	r := &record{kind: b[4]}
	if r.kind != kindHTTP && r.kind != kindWorker {
		return nil, &RecordError{Reason: fmt.Sprintf("unknown kind %d", r.kind)}
	}
	flags := b[5]
	if flags&^knownFlags != 0 {
		return nil, &RecordError{Reason: fmt.Sprintf("unknown flags %#02x", flags)}
	}
	r.tombstone = flags&flagTombstone != 0
	r.stored = flags&flagStoredError != 0
	r.reason = TombstoneReason(b[6])
	copy(r.fp[:], b[7:headerSize])
	d := decoder{b: b[headerSize:]}
	status := d.uvarint("status")
	if d.err == nil && status > 999 {
		d.err = &RecordError{Reason: fmt.Sprintf("status %d out of range", status)}
	}
	r.status = int(status)
	n := d.uvarint("header count")
	if d.err == nil && n > maxRecordHeaders {
		// Checked before the loop: it bounds the work on a hostile record.
		d.err = &RecordError{Reason: fmt.Sprintf("%d header lines, more than %d", n, maxRecordHeaders)}
	}
	hdrStart := d.b
	for i := uint64(0); i < n && d.err == nil; i++ {
		d.bytes("header name")
		d.bytes("header value")
	}
	if d.err == nil {
		r.nhdr = int(n)
		r.hdr = hdrStart[: len(hdrStart)-len(d.b) : len(hdrStart)-len(d.b)]
	}
	body := d.bytes("body")
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, &RecordError{Reason: fmt.Sprintf("%d trailing bytes", len(d.b))}
	}
	r.body = body
	if err := r.check(); err != nil {
		return nil, err
	}
	return r, nil
}

// check reports what makes r unstorable and unreplayable, for the encoder
// (at store time, when a tombstone can still be stored instead) and the
// decoder (at replay time) alike: one set of limits for both.
func (r *record) check() *RecordError {
	switch {
	case r.kind != kindHTTP && r.kind != kindWorker:
		return &RecordError{Reason: fmt.Sprintf("unknown kind %d", r.kind)}
	case r.reason > maxTombstoneReason || (r.reason != TombstoneNone) != r.tombstone:
		return &RecordError{Reason: fmt.Sprintf("tombstone reason %d does not match the flags", r.reason)}
	case r.stored && (r.kind != kindWorker || r.tombstone):
		return &RecordError{Reason: "a stored error flag outside a worker result"}
	case r.kind == kindWorker && r.status != 0,
		r.kind == kindHTTP && r.tombstone && r.status != 0:
		return &RecordError{Reason: fmt.Sprintf("status %d in a record that has none", r.status)}
	case r.kind == kindHTTP && !r.tombstone && (r.status < 200 || r.status > 999):
		// net/http panics on a status outside 100–999, and 1xx is never
		// a final response.
		return &RecordError{Reason: fmt.Sprintf("status %d is not a final HTTP status", r.status)}
	case r.nhdr < 0 || r.nhdr > maxRecordHeaders:
		return &RecordError{Reason: fmt.Sprintf("%d header lines, more than %d", r.nhdr, maxRecordHeaders)}
	}
	var bad *RecordError
	r.eachHeader(func(name, _ []byte) {
		if len(name) == 0 && bad == nil {
			bad = &RecordError{Reason: "empty header name"}
		}
	})
	return bad
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = &RecordError{Reason: "truncated or overlong " + what}
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(what string) []byte {
	if d.err != nil {
		return nil
	}
	n, k := binary.Uvarint(d.b)
	if k <= 0 {
		d.err = &RecordError{Reason: "truncated or overlong " + what + " length"}
		return nil
	}
	d.b = d.b[k:]
	if n > uint64(len(d.b)) {
		d.err = &RecordError{Reason: fmt.Sprintf("%s of %d bytes overruns the record", what, n)}
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}
