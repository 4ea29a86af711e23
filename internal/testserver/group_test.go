//go:build unix

package testserver

import (
	"slices"
	"testing"
)

func TestRotated(t *testing.T) {
	l := []string{"a", "b", "c"}
	for first, want := range map[int][]string{0: {"a", "b", "c"}, 1: {"b", "c", "a"}, 5: {"c", "a", "b"}, -1: {"c", "a", "b"}} {
		if got := Rotated(l, first); !slices.Equal(got, want) {
			t.Errorf("Rotated(%v, %d) = %v, want %v", l, first, got, want)
		}
	}
	if !slices.Equal(l, []string{"a", "b", "c"}) {
		t.Errorf("Rotated changed its input: %v", l)
	}
	if Rotated(nil, 3) != nil {
		t.Error("Rotated(nil) != nil")
	}
}
