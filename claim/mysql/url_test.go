package mysql

import (
	"net/url"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	u, _ := url.Parse("mariadb://app:pw@db.internal/app?prefix=c_&maxvalue=1024&migrate=false&sweep=0&poll_max=10ms&poll_learn=false&max_conns=3&dial_timeout=2s&lock_wait_timeout=3s&lazy=true")
	o, cfg, err := parseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	if o.TablePrefix != "c_" || o.MaxValueLen != 1024 || !o.SkipMigrate || o.SweepInterval != -1 ||
		o.Poll == nil || o.Poll.Max != 10*time.Millisecond || !o.Poll.NoHoldEstimate || o.maxConns != 3 {
		t.Errorf("options %+v", o)
	}
	if cfg.Addr != "db.internal:3306" || cfg.User != "app" || cfg.Passwd != "pw" || cfg.DBName != "app" ||
		cfg.Timeout != 2*time.Second || !cfg.InterpolateParams || !cfg.ClientFoundRows || cfg.TLS != nil ||
		cfg.Params["innodb_lock_wait_timeout"] != "3" {
		t.Errorf("config %+v", cfg)
	}
	u, _ = url.Parse("mysql://h:3307/db?tls=true&skip_verify=true")
	if _, cfg, err := parseURL(u); err != nil || cfg.TLS == nil || !cfg.TLS.InsecureSkipVerify || cfg.TLS.ServerName != "h" || cfg.Addr != "h:3307" {
		t.Errorf("tls: %+v, %v", cfg, err)
	}
	for _, bad := range []string{
		"mysql://h/db?lock_wait_timeout=500ms",
		"mysql://h/db?lock_wait_timeout=1500ms",
		"mysql://h/db?maxvalue=-1",
		"mysql://h/db?maxvalue=999999999999",
		"mysql://h/db?migrate=maybe",
		"mysql://h/db?poll_learn=maybe",
		"mysql://h/db?prefix=a&prefix=b",
		"mysql://h/db?prefix=a%60b",
		"mysql://h/a/b",
		"mysql:///db",
		"postgres://h/db",
	} {
		u, _ := url.Parse(bad)
		if _, _, err := parseURL(u); err == nil {
			t.Errorf("parseURL(%s): no error", bad)
		}
	}
}

func TestCheckVersion(t *testing.T) {
	for v, ok := range map[string]bool{
		"10.11.19-MariaDB-0+deb12u1": true,
		"11.4.2-MariaDB":             true,
		"10.5.0-MariaDB-log":         true,
		"10.4.31-MariaDB":            false,
		"8.0.36":                     false,
		"8.4.0-mysql":                false,
	} {
		if err := checkVersion(v); (err == nil) != ok {
			t.Errorf("checkVersion(%q) = %v", v, err)
		}
	}
}
