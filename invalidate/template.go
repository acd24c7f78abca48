package invalidate

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Template is a parsed key template such as "item:page:{id}": literal text
// with column references in braces. "{{" and "}}" stand for literal braces.
type Template struct {
	src   string
	parts []part
}

type part struct {
	lit    string
	column string // set for a column reference
}

// ParseTemplate parses src once, at start; rendering never fails on syntax.
func ParseTemplate(src string) (*Template, error) {
	t := &Template{src: src}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, part{lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '{' && i+1 < len(src) && src[i+1] == '{':
			lit.WriteByte('{')
			i++
		case c == '}' && i+1 < len(src) && src[i+1] == '}':
			lit.WriteByte('}')
			i++
		case c == '}':
			return nil, fmt.Errorf("template %q: unmatched } at offset %d", src, i)
		case c == '{':
			end := strings.IndexByte(src[i+1:], '}')
			if end < 0 {
				return nil, fmt.Errorf("template %q: unclosed { at offset %d", src, i)
			}
			name := src[i+1 : i+1+end]
			if !isColumnName(name) {
				return nil, fmt.Errorf("template %q: %q at offset %d is not a column name", src, name, i)
			}
			flush()
			t.parts = append(t.parts, part{column: name})
			i += end + 1
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	if len(t.parts) == 0 {
		return nil, fmt.Errorf("template %q: empty", src)
	}
	return t, nil
}

func isColumnName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || c == '$' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (i > 0 && c >= '0' && c <= '9') {
			continue
		}
		return false
	}
	return true
}

// String returns the template's source.
func (t *Template) String() string { return t.src }

// Columns lists the columns the template references, in order.
func (t *Template) Columns() []string {
	var cols []string
	for _, p := range t.parts {
		if p.column != "" {
			cols = append(cols, p.column)
		}
	}
	return cols
}

// appendValue formats one column value the way it appears in keys. It
// reports false for NULL: a key derived from NULL names nothing in the cache.
func appendValue(b []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return b, false
	case string:
		return append(b, x...), true
	case []byte:
		return append(b, x...), true
	case int64:
		return strconv.AppendInt(b, x, 10), true
	case int32:
		return strconv.AppendInt(b, int64(x), 10), true
	case int16:
		return strconv.AppendInt(b, int64(x), 10), true
	case int8:
		return strconv.AppendInt(b, int64(x), 10), true
	case int:
		return strconv.AppendInt(b, int64(x), 10), true
	case uint64:
		return strconv.AppendUint(b, x, 10), true
	case uint32:
		return strconv.AppendUint(b, uint64(x), 10), true
	case uint16:
		return strconv.AppendUint(b, uint64(x), 10), true
	case uint8:
		return strconv.AppendUint(b, uint64(x), 10), true
	case uint:
		return strconv.AppendUint(b, uint64(x), 10), true
	case float64:
		return strconv.AppendFloat(b, x, 'f', -1, 64), true
	case float32:
		return strconv.AppendFloat(b, float64(x), 'f', -1, 32), true
	case time.Time:
		return x.AppendFormat(b, "2006-01-02 15:04:05.999999"), true
	case fmt.Stringer:
		return append(b, x.String()...), true
	default:
		return fmt.Append(b, x), true
	}
}
