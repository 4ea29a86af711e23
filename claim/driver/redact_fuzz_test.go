package driver_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/stampede-go/stampede/claim/driver"
)

// FuzzRedactURL plants a secret as the password, as a token parameter
// and as the password of a URL-valued parameter of an arbitrary URL:
// RedactURL's result never shows it, escaped or not.
func FuzzRedactURL(f *testing.F) {
	f.Add("redis://user@host:6379/0?prefix=app", "s3cr3t-pw")
	f.Add("consul://h:8500/a/b?dc=x", "tok-123456")
	f.Add("postgres://h/db?sslmode=disable&password=x", "p@ss:w/rd?#")
	f.Add("x://[::1]:1/%2F?a=1&a=2", "ümlaut-secret")
	f.Add("etcds://h1:1,h2:2/p?cacert=/ca.pem", "a b c d e")
	f.Fuzz(func(t *testing.T, raw, secret string) {
		if len(secret) < 6 {
			return
		}
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		plant := func(s string) string {
			v := *u
			name := ""
			if u.User != nil {
				name = u.User.Username()
			}
			v.User = url.UserPassword(name, s)
			q := v.Query()
			q.Set("token", s)
			q.Set("endpoint", "http://u:"+s+"@127.0.0.1:1")
			v.RawQuery = q.Encode()
			return v.String()
		}
		forms := []string{secret, url.QueryEscape(secret), url.PathEscape(secret), (&url.URL{User: url.UserPassword("", secret)}).String()[3:]}
		// Skip secrets that the URL shows anyway, without them.
		const placeholder = "PLACEHOLDER-not-the-secret"
		without := driver.RedactURL(plant(placeholder))
		for _, s := range forms {
			if len(s) >= 6 && strings.Contains(without, s) {
				return
			}
		}
		got := driver.RedactURL(plant(secret))
		for _, s := range forms {
			if len(s) >= 6 && strings.Contains(got, s) {
				t.Fatalf("RedactURL(%q) = %q: shows %q", plant(secret), got, s)
			}
		}
	})
}
