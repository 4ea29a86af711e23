package flight_test

import (
	"testing"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/internal/backendtest"
)

func TestFencedInvalidation(t *testing.T) {
	sp := memory.NewSpace(nil)
	backendtest.Flight(t, func(t *testing.T) *claim.Client {
		c, err := memory.New(sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	})
}
