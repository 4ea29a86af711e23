package securitytest

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// RoundtripURLAndNew runs Roundtrip on a Client of rawURL (subtest
// "URL") and on the one newClient makes with the driver's New of a
// client the user configured (subtest "New"). Each Client is closed when
// its subtest ends, before the cleanups newClient registered with t (the
// user's client's Close).
func RoundtripURLAndNew(t *testing.T, rawURL string, newClient func(t *testing.T) (*claim.Client, error)) {
	t.Helper()
	roundtrip := func(name string, open func(t *testing.T) (*claim.Client, error)) {
		t.Run(name, func(t *testing.T) {
			c, err := open(t)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			defer c.Close()
			Roundtrip(t, c)
		})
	}
	roundtrip("URL", func(*testing.T) (*claim.Client, error) { return claim.Open(context.Background(), rawURL) })
	roundtrip("New", newClient)
}

// TLSRefusals derives, from rawURL (a URL that works against a server
// requiring TLS and a client certificate: cacert, cert and key files,
// and tls=true or a TLS scheme), the URLs such a server must refuse, by
// case name: without the client certificate, with the system roots
// instead of cacert, in plain text (scheme plainScheme, none of those
// parameters), and, if rawURL has a password, with a wrong one. The
// URL's other parts stay.
func TLSRefusals(t testing.TB, rawURL, plainScheme string) map[string]string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	without := func(scheme string, params ...string) string {
		v := *u
		v.Scheme = scheme
		q := u.Query()
		for _, p := range params {
			q.Del(p)
		}
		v.RawQuery = q.Encode()
		return v.String()
	}
	urls := map[string]string{
		"no client certificate": without(u.Scheme, "cert", "key"),
		"system roots":          without(u.Scheme, "cacert"),
		"plain text":            without(plainScheme, "tls", "cacert", "cert", "key"),
	}
	if pw, ok := u.User.Password(); ok {
		v := *u
		v.User = url.UserPassword(u.User.Username(), "wrong-"+pw)
		urls["wrong password"] = v.String()
	}
	return urls
}

// Refused checks, in a subtest per case, that the server refuses a
// client of each of urls: opening it, or else a TryClaim through it,
// fails within timeout with an error other than ErrHeld, and the error
// does not show secret (the password or token the URLs carry; "" for
// none).
func Refused(t *testing.T, urls map[string]string, secret string, timeout time.Duration) {
	t.Helper()
	for name, raw := range urls {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			c, err := claim.Open(ctx, raw)
			if err == nil {
				defer c.Close()
				_, err = c.TryClaim(ctx, "k", time.Second)
			}
			if err == nil || errors.Is(err, claim.ErrHeld) {
				t.Fatalf("Open and TryClaim: %v, want a TLS or authentication error", err)
			}
			if secret != "" && strings.Contains(err.Error(), secret) {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
}

// OpenFails checks that claim.Open refuses each of urls (bad parameters,
// say), with an error that does not show secret ("" for none).
func OpenFails(t *testing.T, secret string, urls ...string) {
	t.Helper()
	ctx := ctxT(t)
	for _, raw := range urls {
		c, err := claim.Open(ctx, raw)
		if err == nil {
			c.Close()
			t.Errorf("Open(%q) succeeded", claim.RedactURL(raw))
		} else if secret != "" && strings.Contains(err.Error(), secret) {
			t.Errorf("Open(%q): the error shows the secret: %v", claim.RedactURL(raw), err)
		}
	}
}

// HidesPassword fails t if err, what opening u returned, shows u's
// password, unless reopen, opening u with another password in its
// place, fails showing that text as well (it is then the URL's own text,
// a host or a prefix spelled alike, not the password).
func HidesPassword(t *testing.T, u *url.URL, err error, reopen func(*url.URL) error) {
	t.Helper()
	if err == nil || u.User == nil {
		return
	}
	pw, ok := u.User.Password()
	if !ok || pw == "" || !strings.Contains(err.Error(), pw) {
		return
	}
	other := *u
	other.User = url.UserPassword(u.User.Username(), "placeholder-password")
	if err2 := reopen(&other); err2 == nil || !strings.Contains(err2.Error(), pw) {
		t.Errorf("error shows the password: %v", err)
	}
}

// FuzzURL makes f a fuzz target of a driver's URL parser or opener,
// seeded with seeds: open gets every string that parses as a URL (and
// may check what it made of it); when it fails, its error must hide the
// URL's password (HidesPassword, which calls open again).
func FuzzURL(f *testing.F, open func(t *testing.T, u *url.URL) error, seeds ...string) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		reopen := func(u *url.URL) error { return open(t, u) }
		HidesPassword(t, u, reopen(u), reopen)
	})
}

// OpenURL, for FuzzURL, opens u with claim.Open and closes the Client.
// It gives up after a second: a URL that makes Open call its server must
// not stall the fuzzer.
func OpenURL(t *testing.T, u *url.URL) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := claim.Open(ctx, u.String())
	if err == nil {
		c.Close()
	}
	return err
}
