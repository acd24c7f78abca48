package httpapi

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// shared is a package-level error, as handlers keep them: answering it must
// not change it.
var shared = &Error{Status: http.StatusNotFound, Err: errors.New("no such job")}

func TestHandler(t *testing.T) {
	tests := []struct {
		name    string
		h       HandlerFunc
		status  int
		body    string // exact, without the trailing newline
		header  map[string]string
		logged  bool
		errText string // in the log line, when logged
	}{
		{
			name: "success is left alone",
			h: func(w http.ResponseWriter, r *http.Request) error {
				return WriteJSON(w, http.StatusAccepted, map[string]any{"job": "j1", "n": 2})
			},
			status: http.StatusAccepted,
			body:   `{"job":"j1","n":2}`,
			header: map[string]string{"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"},
		},
		{
			name: "plain error is a logged 500 with code internal",
			h: func(http.ResponseWriter, *http.Request) error {
				return errors.New("mysql 127.0.0.1:1: connection refused")
			},
			status: http.StatusInternalServerError,
			body:   `{"code":"internal","error":"mysql 127.0.0.1:1: connection refused"}`,
			header: map[string]string{"Content-Type": "application/json"},
			logged: true, errText: "connection refused",
		},
		{
			name: "Errorf sets status and message, no code",
			h: func(http.ResponseWriter, *http.Request) error {
				return Errorf(http.StatusBadRequest, "limit %q: want 1 to %d", "x", 1000)
			},
			status: http.StatusBadRequest,
			body:   `{"error":"limit \"x\": want 1 to 1000"}`,
		},
		{
			name: "Wrap keeps the cause's text",
			h: func(http.ResponseWriter, *http.Request) error {
				return Wrap(http.StatusUnauthorized, errors.New("bad signature"))
			},
			status: http.StatusUnauthorized,
			body:   `{"error":"bad signature"}`,
		},
		{
			name: "code and retry after",
			h: func(http.ResponseWriter, *http.Request) error {
				return &Error{Status: http.StatusTooManyRequests, Code: "rate_limited", Message: "too many requests", RetryAfter: 3}
			},
			status: http.StatusTooManyRequests,
			body:   `{"code":"rate_limited","error":"too many requests","retry_after_s":3}`,
			header: map[string]string{"Retry-After": "3"},
		},
		{
			name:   "wrapped Error answers with its own status and message",
			h:      func(http.ResponseWriter, *http.Request) error { return fmt.Errorf("get job: %w", shared) },
			status: http.StatusNotFound,
			body:   `{"error":"no such job"}`,
		},
		{
			name: "5xx Error is logged",
			h: func(http.ResponseWriter, *http.Request) error {
				return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "reservations unavailable", Err: errors.New("redis down")}
			},
			status: http.StatusServiceUnavailable,
			body:   `{"code":"unavailable","error":"reservations unavailable"}`,
			logged: true, errText: "reservations unavailable",
		},
		{
			name:   "Error without status is a 500",
			h:      func(http.ResponseWriter, *http.Request) error { return &Error{Message: "half-built"} },
			status: http.StatusInternalServerError,
			body:   `{"error":"half-built"}`,
			logged: true, errText: "half-built",
		},
		{
			name:   "Error with neither message nor cause says its status",
			h:      func(http.ResponseWriter, *http.Request) error { return &Error{Status: http.StatusConflict} },
			status: http.StatusConflict,
			body:   `{"error":"Conflict"}`,
		},
		{
			name: "headers set before the error stay",
			h: func(w http.ResponseWriter, r *http.Request) error {
				w.Header().Set("Allow", http.MethodPost)
				return Errorf(http.StatusMethodNotAllowed, "method %s not allowed; use POST", r.Method)
			},
			status: http.StatusMethodNotAllowed,
			body:   `{"error":"method GET not allowed; use POST"}`,
			header: map[string]string{"Allow": "POST"},
		},
		{
			name: "an answer that does not encode becomes a 500",
			h: func(w http.ResponseWriter, r *http.Request) error {
				return WriteJSON(w, http.StatusOK, map[string]any{"c": make(chan int)})
			},
			status: http.StatusInternalServerError,
			body:   `{"code":"internal","error":"encode answer: json: unsupported type: chan int"}`,
			logged: true, errText: "unsupported type",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			rec := httptest.NewRecorder()
			Handler(log, tt.h).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
			if rec.Code != tt.status {
				t.Errorf("status %d, want %d", rec.Code, tt.status)
			}
			if got := rec.Body.String(); got != tt.body+"\n" {
				t.Errorf("body %q, want %q", got, tt.body+"\n")
			}
			for k, v := range tt.header {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("header %s %q, want %q", k, got, v)
				}
			}
			lines := strings.Count(logs.String(), "\n")
			switch {
			case tt.logged && (lines != 1 || !strings.Contains(logs.String(), tt.errText) || !strings.Contains(logs.String(), "level=ERROR")):
				t.Errorf("want one ERROR line naming %q, got %q", tt.errText, logs.String())
			case !tt.logged && lines != 0:
				t.Errorf("logged a %d answer: %q", tt.status, logs.String())
			}
		})
	}
	if shared.Message != "" || shared.Status != http.StatusNotFound {
		t.Errorf("answering changed the shared error: %+v", shared)
	}
}

func TestWriteJSONEncodesBeforeWriting(t *testing.T) {
	rec := httptest.NewRecorder()
	err := WriteJSON(rec, http.StatusOK, func() {})
	if err == nil || !strings.HasPrefix(err.Error(), "encode answer: ") {
		t.Fatalf("err %v, want an encode error", err)
	}
	if rec.Body.Len() != 0 || rec.Header().Get("Content-Type") != "" {
		t.Errorf("wrote %q with %v before the error", rec.Body, rec.Header())
	}
}

func TestErrorUnwraps(t *testing.T) {
	e := Errorf(http.StatusBadRequest, "read body: %w", fs.ErrClosed)
	if !errors.Is(e, fs.ErrClosed) {
		t.Errorf("%v does not wrap its cause", e)
	}
	var got *Error
	if !errors.As(fmt.Errorf("outer: %w", e), &got) || got != e {
		t.Errorf("errors.As does not find the *Error")
	}
	if a := Answer(e); a.Status != http.StatusBadRequest || a.Message != "read body: file already closed" || !errors.Is(a.Err, fs.ErrClosed) {
		t.Errorf("Answer %+v", a)
	}
}
