package invalidate

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"slices"
	"testing"
)

func TestAppendJSONRow(t *testing.T) {
	names := []string{"id", "name", "price", "stock", "note", "blob", "big", "at", "f", "quote\"d"}
	image := []any{int64(1), "Espresso", "99.00", int32(-3), nil, []byte{0xff, 0x00, 'a'}, uint64(math.MaxUint64), "2026-12-02 13:23:43", 1.5, "x"}
	idx := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	got := string(AppendJSONRow(nil, names, idx, image))
	want := `{"id":1,"name":"Espresso","price":"99.00","stock":-3,"note":null,"blob":{"$base64":"/wBh"},"big":18446744073709551615,"at":"2026-12-02 13:23:43","f":1.5,"quote\"d":"x"}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	// Chosen columns, in the order asked; a text column's bytes that are
	// valid UTF-8 stay text.
	if got := string(AppendJSONRow(nil, []string{"price", "id", "t"}, []int{2, 0, 10}, append(image, []byte("héllo")))); got != `{"price":"99.00","id":1,"t":"héllo"}` {
		t.Errorf("chosen columns: %s", got)
	}
}

func TestHashFields(t *testing.T) {
	got := HashFields([]string{"id", "note", "blob", "big", "price"}, []int{0, 1, 2, 3, 4},
		[]any{int64(7), nil, []byte{0xff, 0x00}, uint64(1 << 63), "1.10"})
	want := []string{"id", "7", "blob", "\xff\x00", "big", "9223372036854775808", "price", "1.10"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// Any bytes render as valid JSON that gives them back.
func FuzzAppendJSONText(f *testing.F) {
	for _, s := range []string{"", "plain", "\xff\xfe", "quote\"back\\slash\n", "\u2028"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		out := appendJSONText(nil, text)
		var v any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%q rendered %s: %v", text, out, err)
		}
		var back []byte
		switch x := v.(type) {
		case string:
			back = []byte(x)
		case map[string]any:
			b, err := base64.StdEncoding.DecodeString(x["$base64"].(string))
			if err != nil {
				t.Fatal(err)
			}
			back = b
		}
		if string(back) != string(text) {
			t.Fatalf("%q came back %q", text, back)
		}
	})
}
