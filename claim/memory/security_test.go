package memory_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
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
	ctx := context.Background()
	a, err := claim.Open(ctx, "mem://isolation-a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := claim.Open(ctx, "mem://isolation-b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	securitytest.Isolation(t, a, b)
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

func FuzzOpenURL(f *testing.F) {
	f.Add("mem://")
	f.Add("mem://name?maxvalue=10")
	f.Add("mem://name/path")
	f.Add("mem://u:pw@name?maxvalue=-1&x=1")
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		u.Scheme = memory.Scheme
		b, err := (&memory.URLOpener{}).OpenURL(context.Background(), u)
		if err != nil {
			if pw, ok := u.User.Password(); ok && len(pw) > 3 && strings.Contains(err.Error(), pw) {
				t.Errorf("error shows the password: %v", err)
			}
			return
		}
		b.Close()
	})
}
