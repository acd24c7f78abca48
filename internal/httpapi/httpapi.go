// Package httpapi is the one error type and JSON writer of flashsync's HTTP
// APIs: the node's operator endpoints (/healthz, /jobs, /rules/explain, the
// seckill reconcile), the seckill API and the CDN console.
//
// Handlers return errors; Handler turns them into one JSON answer:
//
//	{"error": "what went wrong", "code": "sold_out", "retry_after_s": 3}
//
// "error" is always there; "code", a stable name clients may switch on, and
// "retry_after_s" (with the Retry-After header) only when the error sets
// them. The status is the *Error's; any other error answers 500 with code
// "internal". Modelled on Caddy's admin APIError and nsq's internal/http_api.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
)

// CodeInternal is the code of the answer to an error that is not an *Error.
const CodeInternal = "internal"

// Error is an error with the answer it makes: its HTTP status and the JSON
// body the client reads.
type Error struct {
	// Status is the HTTP status code; 0 means 500.
	Status int `json:"-"`
	// Code, optional, is a stable machine-readable name of the refusal.
	Code string `json:"code,omitempty"`
	// Message is the "error" field; empty, it is Err's text.
	Message string `json:"error"`
	// RetryAfter, in seconds, when positive, is sent as retry_after_s and as
	// the Retry-After header.
	RetryAfter int `json:"retry_after_s,omitempty"`
	// Err is the cause, for errors.Is and errors.As.
	Err error `json:"-"`
}

// Errorf returns an *Error of status whose message and cause are
// fmt.Errorf(format, args...): %w wraps as usual.
func Errorf(status int, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Status: status, Message: err.Error(), Err: err}
}

// Wrap returns an *Error of status with err's text and err as the cause.
func Wrap(status int, err error) *Error {
	return &Error{Status: status, Message: err.Error(), Err: err}
}

func (e *Error) Error() string {
	switch {
	case e.Message != "":
		return e.Message
	case e.Err != nil:
		return e.Err.Error()
	}
	return http.StatusText(e.status())
}

func (e *Error) Unwrap() error { return e.Err }

func (e *Error) status() int {
	if e.Status == 0 {
		return http.StatusInternalServerError
	}
	return e.Status
}

// Answer is the answer err makes: a copy of its *Error with Status and
// Message filled in, or, for any other error, a 500 with code "internal"
// and err's text. Errors are often package variables shared by requests:
// the copy is the caller's to change.
func Answer(err error) Error {
	var e *Error
	if !errors.As(err, &e) {
		return Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: err.Error(), Err: err}
	}
	a := *e
	a.Status = e.status()
	a.Message = e.Error()
	return a
}

// HandlerFunc is an HTTP handler that returns its error instead of
// answering it. It returns an error only before writing anything: once it
// wrote its answer, there is nothing left to tell the client.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handler adapts h: an error becomes its JSON answer (see Answer), and an
// answer of 500 or more is logged once, on log, with the request and the
// error. Nothing else logs or answers an API error.
func Handler(log *slog.Logger, h HandlerFunc) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		if err == nil {
			return
		}
		a := Answer(err)
		if a.Status >= 500 {
			log.Error("http api", "method", r.Method, "path", r.URL.Path, "status", a.Status, "remote", r.RemoteAddr, "err", err)
		}
		if a.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(a.RetryAfter))
		}
		WriteJSON(w, a.Status, &a) // an Error always encodes
	})
}

// WriteJSON answers status with v as JSON (followed by a newline). It
// encodes v before writing anything, so an encoding error is returned with
// nothing written and the caller can still answer it; a failed write is
// not returned: the client is gone and nothing is left to answer.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode answer: %w", err)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
	return nil
}
