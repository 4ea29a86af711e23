package claim_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

func TestRedactURL(t *testing.T) {
	const secret = "s3cr3t-sentinel"
	for _, raw := range []string{
		"redis://user:" + secret + "@host:6379/0",
		"consul://host:8500/p?token=" + secret,
		"x://h/?password=" + secret + "&prefix=a",
		"x://h/?api_key=" + secret,
		"dynamodb://t?endpoint=" + url.QueryEscape("http://u:"+secret+"@127.0.0.1:8000"),
		"::not a url " + secret,
	} {
		got := claim.RedactURL(raw)
		if strings.Contains(got, secret) {
			t.Errorf("RedactURL(%q) = %q: secret shown", raw, got)
		}
	}
	if got := claim.RedactURL("redis://host:6379/0?prefix=app"); got != "redis://host:6379/0?prefix=app" {
		t.Errorf("RedactURL changed a URL without secrets: %q", got)
	}
}

func TestOpenErrors(t *testing.T) {
	_, err := claim.Open(context.Background(), "nosuch://u:pw-sentinel@h/")
	if err == nil || strings.Contains(err.Error(), "pw-sentinel") || !strings.Contains(err.Error(), "unknown scheme") {
		t.Errorf("Open of an unknown scheme: %v", err)
	}
	_, err = claim.Open(context.Background(), "%%bad://pw-sentinel")
	if err == nil || strings.Contains(err.Error(), "pw-sentinel") {
		t.Errorf("Open of a malformed URL: %v", err)
	}
}

func TestParams(t *testing.T) {
	u, _ := url.Parse("x://h/?a=1&d=250ms&b=true&s=str")
	p := claim.NewParams(u)
	if p.Int("a", 0) != 1 || p.Duration("d", 0) != 250*time.Millisecond || !p.Bool("b", false) || p.String("s", "") != "str" || p.Int("absent", 7) != 7 {
		t.Error("values not read")
	}
	if err := p.Err(); err != nil {
		t.Errorf("Err: %v", err)
	}
	u, _ = url.Parse("x://h/?a=1&unknown=2")
	p = claim.NewParams(u)
	p.Int("a", 0)
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Errorf("unknown parameter: err = %v", err)
	}
	u, _ = url.Parse("x://h/?a=x&token=notanint")
	p = claim.NewParams(u)
	p.Int("a", 0)
	p.Int("token", 0)
	if err := p.Err(); err == nil || strings.Contains(err.Error(), "notanint") {
		t.Errorf("malformed parameter: err = %v (a secret-named value must not be shown)", err)
	}
}

func TestKeyEncoder(t *testing.T) {
	e := claim.KeyEncoder{MaxLen: 64, Safe: claim.PrintableASCII}
	seen := map[string]string{}
	for _, k := range []string{"a", "=a", "#a", "a b", strings.Repeat("x", 63), strings.Repeat("x", 64), "\x00", "ключ"} {
		enc := e.Encode(k)
		if len(enc) > 64 {
			t.Errorf("Encode(%q) = %d bytes, over MaxLen", k, len(enc))
		}
		if prev, dup := seen[enc]; dup {
			t.Errorf("Encode(%q) == Encode(%q) == %q", k, prev, enc)
		}
		seen[enc] = k
		if enc != e.Encode(k) {
			t.Errorf("Encode(%q) not deterministic", k)
		}
	}
	if got := e.Encode("plain"); got != "=plain" {
		t.Errorf("readable key encoded as %q", got)
	}
}

func FuzzKeyEncoder(f *testing.F) {
	f.Add("a", "b")
	f.Add("=a", "a")
	f.Add(strings.Repeat("k", 300), strings.Repeat("k", 299)+"j")
	e := claim.KeyEncoder{MaxLen: 250, Safe: claim.PrintableASCII}
	f.Fuzz(func(t *testing.T, a, b string) {
		ea, eb := e.Encode(a), e.Encode(b)
		if len(ea) > 250 || len(eb) > 250 {
			t.Fatalf("over MaxLen: %d, %d", len(ea), len(eb))
		}
		for i := 0; i < len(ea); i++ {
			if !claim.PrintableASCII(ea[i]) {
				t.Fatalf("Encode(%q) has unsafe byte %q", a, ea[i])
			}
		}
		if a != b && ea == eb {
			t.Fatalf("collision: %q and %q both encode to %q", a, b, ea)
		}
	})
}
