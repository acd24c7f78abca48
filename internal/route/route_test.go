package route

import "testing"

func TestGroupForGolden(t *testing.T) {
	tests := []struct {
		value string
		n     int
		want  int
	}{
		{"1", 2, 0}, {"2", 2, 1}, {"3", 2, 0}, {"101", 2, 0},
		{"1", 3, 1}, {"2", 3, 2}, {"42", 3, 2}, {"hello", 3, 1},
		{"anything", 1, 0},
	}
	for _, tt := range tests {
		if got := GroupFor([]byte(tt.value), tt.n); got != tt.want {
			t.Errorf("GroupFor(%q, %d) = %d, want %d", tt.value, tt.n, got, tt.want)
		}
	}
}
