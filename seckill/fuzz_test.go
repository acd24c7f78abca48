package seckill

import (
	"encoding/json"
	"fmt"
	"testing"
)

// FuzzDecodeReservations: whatever a message holds, decoding either fails
// or yields reservations the writer can use, which encode back to the same
// reservations.
func FuzzDecodeReservations(f *testing.F) {
	for _, s := range []string{
		`[{"a":1,"r":"r1","u":"u1","q":1,"t":1}]`,
		`{"a":1,"r":"r1","u":"u1","q":2,"t":1}`,
		`[{"a":1,"r":"r1","u":"u1","q":1,"t":1},{"a":2,"r":"r2","u":"u2","q":1,"t":2}]`,
		`[]`, `[{}]`, `not json`, `[{"a":-1,"r":"r","u":"u","q":1}]`, `[{"a":1,"r":"","u":"u","q":1}]`,
		`[{"a":1,"r":"r","u":"u","q":0}]`, `null`, `[null]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rs, err := decodeReservations(body)
		if err != nil {
			return
		}
		if len(rs) == 0 {
			t.Fatal("no reservation and no error")
		}
		for _, r := range rs {
			if r.Activity <= 0 || r.RequestID == "" || r.User == "" || r.Qty <= 0 {
				t.Fatalf("accepted an unusable reservation %+v from %q", r, body)
			}
		}
		again, err := json.Marshal(rs)
		if err != nil {
			t.Fatal(err)
		}
		rs2, err := decodeReservations(again)
		if err != nil || fmt.Sprint(rs2) != fmt.Sprint(rs) {
			t.Fatalf("round trip: %+v %v, want %+v", rs2, err, rs)
		}
	})
}

// FuzzParseRecord: a reservation record parses only when it has its four
// fields, and formats back to itself.
func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{"R|u1|1|1700000000000", "O|alice|2|0", "X||1|1", "R|u|x|1", "R|u|1", "", "R|a|b|c|d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rec, err := parseRecord(s)
		if err != nil {
			return
		}
		if got := fmt.Sprintf("%s|%s|%d|%d", rec.State, rec.User, rec.Qty, rec.AcceptedMS); got != s {
			// Numbers may be written differently ("+1", "01"); the fields
			// must still be what the record says.
			rec2, err := parseRecord(got)
			if err != nil || rec2 != rec {
				t.Fatalf("%q parsed as %+v, formats as %q", s, rec, got)
			}
		}
	})
}

// TestValidRequestID: the request id alphabet.
func TestValidRequestID(t *testing.T) {
	for id, want := range map[string]bool{
		"r1": true, "user-42:retry.1_a": true, "": false, "a|b": false, "a b": false, "é": false,
		"0123456789012345678901234567890123456789012345678901234567890123":  true,
		"01234567890123456789012345678901234567890123456789012345678901234": false,
		`a"b`: false, "a/b": false,
	} {
		if got := validRequestID(id); got != want {
			t.Errorf("validRequestID(%q) = %v, want %v", id, got, want)
		}
	}
}
