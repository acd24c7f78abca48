package invalidate

import (
	"encoding/base64"
	"encoding/json"
	"unicode/utf8"
)

// The values sync mode writes (issue 12), rendered from a row image: a
// JSON object of chosen columns, or a Redis hash of them. Rules that ask
// for them come next; these are the formats.
//
// JSON: one member per column, named as in the table, in the order given.
// NULL is null; integers (unsigned ones above the signed range too) and
// floats are numbers; DECIMAL, DATE, DATETIME, TIME and text columns are
// strings as the binlog gives them ("99.00", "2026-12-02 13:23:43"), so a
// decimal keeps every digit; bytes (BLOB, BINARY, and TEXT, which the
// binlog sends as bytes) are a string when they are valid UTF-8 and
// otherwise {"$base64": "<standard base64>"}, so no byte is lost or
// replaced. ENUM and SET come as their index and bit set (numbers).
//
// Hash: one field per column whose value is not NULL (a NULL column is an
// absent field), the value as text (appendValue) or, for bytes, the bytes
// themselves: Redis hashes are binary-safe.

// AppendJSONRow appends the JSON object of image's columns at idx, named
// names[i], to b.
func AppendJSONRow(b []byte, names []string, idx []int, image []any) []byte {
	b = append(b, '{')
	for i, c := range idx {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, names[i])
		b = append(b, ':')
		var v any
		if c < len(image) {
			v = image[c]
		}
		b = appendJSONValue(b, v)
	}
	return append(b, '}')
}

func appendJSONValue(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case string:
		return appendJSONText(b, []byte(x))
	case []byte:
		return appendJSONText(b, x)
	case int64, int32, int16, int8, int, uint64, uint32, uint16, uint8, uint, float64, float32:
		b, _ = appendValue(b, x)
		return b
	default:
		text, _ := appendValue(nil, x)
		return appendJSONText(b, text)
	}
}

// appendJSONText appends text as a JSON string, or, when it is not valid
// UTF-8, as {"$base64": ...}.
func appendJSONText(b, text []byte) []byte {
	if utf8.Valid(text) {
		return appendJSONString(b, string(text))
	}
	b = append(b, `{"$base64":"`...)
	b = base64.StdEncoding.AppendEncode(b, text)
	return append(b, `"}`...)
}

// appendJSONString appends s as a JSON string. Written by hand, not with
// json.Marshal: sync mode quotes every column of every row, and a row's
// JSON is quoted again as a message's value only when it is not JSON. A
// string that is not valid UTF-8 is left to encoding/json (its invalid
// bytes become U+FFFD; AppendJSONRow sends such bytes as base64 instead).
func appendJSONString(b []byte, s string) []byte {
	if !utf8.ValidString(s) {
		q, _ := json.Marshal(s) // a string always marshals
		return append(b, q...)
	}
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// HashFields is image's columns at idx as a Redis hash: field, value, ...
// pairs, NULL columns left out.
func HashFields(names []string, idx []int, image []any) []string {
	out := make([]string, 0, 2*len(idx))
	for i, c := range idx {
		if c >= len(image) || image[c] == nil {
			continue
		}
		v, _ := appendValue(nil, image[c])
		out = append(out, names[i], string(v))
	}
	return out
}
