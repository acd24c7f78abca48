// Package cdn is the CDN cascade: the dispatcher (in the center) forwards
// every batch's URLs and tags to the console of each CDN node, and the
// console (on the node) purges them from the node's cache machines.
//
// Requests from dispatcher to console are signed with a key shared by the
// two: X-Flashsync-Signature is hex(HMAC-SHA256(key, timestamp "\n" nonce
// "\n" body)), where X-Flashsync-Timestamp is unix seconds and
// X-Flashsync-Nonce 16 to 64 hex characters, fresh for every request. The
// console refuses a timestamp more than max_skew away from its clock and a
// nonce it has seen in the last 2×max_skew.
package cdn

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Header names of a signed request.
const (
	HeaderTimestamp = "X-Flashsync-Timestamp"
	HeaderNonce     = "X-Flashsync-Nonce"
	HeaderSignature = "X-Flashsync-Signature"
)

// PurgePath is the console's purge endpoint.
const PurgePath = "/v1/purge"

// HealthPath answers GET with 200 while the console serves (the admin
// page's health of the CDN nodes); it needs no signature and says nothing
// of the cache machines, which each purge reports on.
const HealthPath = "/v1/health"

// Nonce lengths, in hex characters.
const (
	MinNonceLen = 16
	MaxNonceLen = 64
)

// Sign returns hex(HMAC-SHA256(key, ts + "\n" + nonce + "\n" + body)).
func Sign(key []byte, ts int64, nonce string, body []byte) string {
	return hex.EncodeToString(mac(key, strconv.FormatInt(ts, 10), nonce, body))
}

func mac(key []byte, ts, nonce string, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(ts))
	h.Write([]byte{'\n'})
	h.Write([]byte(nonce))
	h.Write([]byte{'\n'})
	h.Write(body)
	return h.Sum(nil)
}

// NewNonce returns 32 random hex characters.
func NewNonce() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// SignRequest sets the three headers on req for body, with timestamp now and
// a fresh nonce.
func SignRequest(req *http.Request, key, body []byte, now time.Time) error {
	nonce, err := NewNonce()
	if err != nil {
		return err
	}
	ts := now.Unix()
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderNonce, nonce)
	req.Header.Set(HeaderSignature, Sign(key, ts, nonce, body))
	return nil
}

// Errors of Verify.
var (
	ErrBadSignature = errors.New("missing or bad signature")
	ErrStale        = errors.New("timestamp outside the allowed clock skew")
)

// Verify checks a request's headers against body: the signature (compared
// in constant time) and then the timestamp, which must be within maxSkew of
// now. It returns the timestamp and nonce; the caller checks the nonce for
// replay.
func Verify(key []byte, h http.Header, body []byte, now time.Time, maxSkew time.Duration) (ts int64, nonce string, err error) {
	tsText, nonce, sigText := h.Get(HeaderTimestamp), h.Get(HeaderNonce), h.Get(HeaderSignature)
	if len(tsText) == 0 || len(tsText) > 19 || !isDigits(tsText) {
		return 0, "", fmt.Errorf("%w: %s must be unix seconds", ErrBadSignature, HeaderTimestamp)
	}
	ts, err = strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("%w: %s must be unix seconds", ErrBadSignature, HeaderTimestamp)
	}
	if len(nonce) < MinNonceLen || len(nonce) > MaxNonceLen || !isHex(nonce) {
		return 0, "", fmt.Errorf("%w: %s must be %d to %d hex characters", ErrBadSignature, HeaderNonce, MinNonceLen, MaxNonceLen)
	}
	sig, err := hex.DecodeString(sigText)
	if err != nil || len(sig) != sha256.Size {
		return 0, "", fmt.Errorf("%w: %s must be %d hex characters", ErrBadSignature, HeaderSignature, 2*sha256.Size)
	}
	if !hmac.Equal(sig, mac(key, tsText, nonce, body)) {
		return 0, "", ErrBadSignature
	}
	skew := now.Sub(time.Unix(ts, 0))
	if skew > maxSkew || skew < -maxSkew {
		return 0, "", fmt.Errorf("%w (%s, max %s)", ErrStale, skew.Truncate(time.Second), maxSkew)
	}
	return ts, nonce, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
