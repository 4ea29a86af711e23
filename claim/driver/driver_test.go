package driver_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
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
		got := driver.RedactURL(raw)
		if strings.Contains(got, secret) {
			t.Errorf("RedactURL(%q) = %q: secret shown", raw, got)
		}
	}
	if got := driver.RedactURL("redis://host:6379/0?prefix=app"); got != "redis://host:6379/0?prefix=app" {
		t.Errorf("RedactURL changed a URL without secrets: %q", got)
	}
}

func TestParams(t *testing.T) {
	u, _ := url.Parse("x://h/?a=1&d=250ms&b=true&s=str")
	p := driver.NewParams(u)
	if p.Int("a", 0) != 1 || p.Duration("d", 0) != 250*time.Millisecond || !p.Bool("b", false) || p.String("s", "") != "str" || p.Int("absent", 7) != 7 {
		t.Error("values not read")
	}
	if err := p.Err(); err != nil {
		t.Errorf("Err: %v", err)
	}
	u, _ = url.Parse("x://h/?a=1&unknown=2")
	p = driver.NewParams(u)
	p.Int("a", 0)
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Errorf("unknown parameter: err = %v", err)
	}
	u, _ = url.Parse("x://h/?a=x&token=notanint")
	p = driver.NewParams(u)
	p.Int("a", 0)
	p.Int("token", 0)
	if err := p.Err(); err == nil || strings.Contains(err.Error(), "notanint") {
		t.Errorf("malformed parameter: err = %v (a secret-named value must not be shown)", err)
	}
}

func TestKeyEncoder(t *testing.T) {
	e := driver.KeyEncoder{MaxLen: 64, Safe: driver.PrintableASCII}
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
	e := driver.KeyEncoder{MaxLen: 250, Safe: driver.PrintableASCII}
	f.Fuzz(func(t *testing.T, a, b string) {
		ea, eb := e.Encode(a), e.Encode(b)
		if len(ea) > 250 || len(eb) > 250 {
			t.Fatalf("over MaxLen: %d, %d", len(ea), len(eb))
		}
		for i := 0; i < len(ea); i++ {
			if !driver.PrintableASCII(ea[i]) {
				t.Fatalf("Encode(%q) has unsafe byte %q", a, ea[i])
			}
		}
		if a != b && ea == eb {
			t.Fatalf("collision: %q and %q both encode to %q", a, b, ea)
		}
	})
}

func TestParamsQueryErrors(t *testing.T) {
	for _, raw := range []string{"x://h/?a=1;b=2", "x://h/?a=%zz", "x://h/?token=s3cr3t;x=1"} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		p := driver.NewParams(u)
		p.String("a", "")
		p.String("b", "")
		p.String("token", "")
		p.String("x", "")
		err = p.Err()
		if err == nil {
			t.Errorf("%q: a query that does not parse was accepted", raw)
		} else if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%q: error shows a secret: %v", raw, err)
		}
	}
	if got := driver.RedactURL("x://h/?token=s3cr3t;x=1"); strings.Contains(got, "s3cr3t") {
		t.Errorf("RedactURL of an unparsable query shows the secret: %q", got)
	}
}

func TestParamsTLS(t *testing.T) {
	u, _ := url.Parse("x://h/?skip_verify=true")
	if _, err := driver.NewParams(u).TLS(false, "h"); err == nil {
		t.Error("a TLS parameter without TLS was accepted")
	}
	p := driver.NewParams(u)
	c, err := p.TLS(true, "h")
	if err != nil || c == nil || !c.InsecureSkipVerify || c.ServerName != "h" {
		t.Errorf("TLS(true): %+v, %v", c, err)
	}
	if err := p.Err(); err != nil {
		t.Errorf("TLS parameters not marked used: %v", err)
	}
	u, _ = url.Parse("x://h/?cert=/nonexistent.pem")
	if _, err := driver.NewParams(u).TLS(true, "h"); err == nil {
		t.Error("a client certificate without its key was accepted")
	}
}
