package memory_test

import (
	"context"
	"net/url"
	"testing"

	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
)

func TestHostileValues(t *testing.T) {
	b, err := memory.New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	securitytest.Hostile(t, b)
}

// Two spaces are two namespaces: nothing of one is visible in the other.
func TestIsolation(t *testing.T) {
	securitytest.Isolation(t, backendtest.Open(t, "mem://isolation-a"), backendtest.Open(t, "mem://isolation-b"))
}

func TestValueLimit(t *testing.T) {
	sp := memory.NewSpace(&memory.SpaceOptions{MaxValueLen: 1000})
	b, err := memory.New(sp, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	securitytest.ValueLimit(t, b, 1000)
	securitytest.LongKeys(t, b, []int{1, 255, 256, 1 << 16})
}

// FuzzOpenURL: no URL makes the opener panic, and a password in a URL
// never reaches an error.
func FuzzOpenURL(f *testing.F) {
	securitytest.FuzzURL(f, func(t *testing.T, u *url.URL) error {
		v := *u
		v.Scheme = memory.Scheme
		b, err := (&memory.URLOpener{}).OpenURL(context.Background(), &v)
		if err == nil {
			b.Close()
		}
		return err
	}, "mem://", "mem://name?maxvalue=10", "mem://name/path", "mem://u:pw@name?maxvalue=-1&x=1")
}
