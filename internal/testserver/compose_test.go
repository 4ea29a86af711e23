package testserver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// composeService is the service of docker-compose.test.yml for each kind,
// and the port the server listens on inside its container.
var composeService = map[Kind]struct {
	name string
	port string
}{
	Redis:     {"redis", "6379"},
	Postgres:  {"postgres", "5432"},
	Memcache:  {"memcached", "11211"},
	Etcd:      {"etcd", "2379"},
	Consul:    {"consul", "8500"},
	Dynamo:    {"dynamodb", "8000"},
	ZooKeeper: {"zookeeper", "2181"},
	NATS:      {"nats", "4222"},
	MySQL:     {"mariadb", "3306"},
}

func repoFile(t *testing.T, name string) []byte {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestComposeFile checks that docker-compose.test.yml publishes each
// backend on 127.0.0.1 at the port of its ComposeURLs entry, with a pinned
// image and a healthcheck.
func TestComposeFile(t *testing.T) {
	var compose struct {
		Services map[string]struct {
			Image       string         `yaml:"image"`
			Ports       []string       `yaml:"ports"`
			Healthcheck map[string]any `yaml:"healthcheck"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(repoFile(t, "docker-compose.test.yml"), &compose); err != nil {
		t.Fatalf("docker-compose.test.yml: %v", err)
	}
	if len(ComposeURLs) != len(Kinds) {
		t.Errorf("ComposeURLs has %d entries, want one per kind (%d)", len(ComposeURLs), len(Kinds))
	}
	for _, k := range Kinds {
		cs := composeService[k]
		svc, ok := compose.Services[cs.name]
		if !ok {
			t.Errorf("%s: no service %q in docker-compose.test.yml", k, cs.name)
			continue
		}
		ext, err := External(k, ComposeURLs[k])
		if err != nil {
			t.Errorf("%s: ComposeURLs: %v", k, err)
			continue
		}
		host, port, _ := strings.Cut(ext.Addr(), ":")
		if host != "127.0.0.1" {
			t.Errorf("%s: ComposeURLs host %q, want 127.0.0.1", k, host)
		}
		want := "127.0.0.1:" + port + ":" + cs.port
		found := false
		for _, p := range svc.Ports {
			if p == want {
				found = true
			}
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s: port mapping %q is not bound to 127.0.0.1", k, p)
			}
		}
		if !found {
			t.Errorf("%s: service %q ports %q, want %q (to match %s)", k, cs.name, svc.Ports, want, ComposeURLs[k])
		}
		if i := strings.LastIndex(svc.Image, ":"); i < 0 || strings.Contains(svc.Image[i:], "/") ||
			svc.Image[i+1:] == "latest" || !strings.ContainsAny(svc.Image[i+1:], "0123456789") {
			t.Errorf("%s: image %q is not pinned to a version tag", k, svc.Image)
		}
		if test, _ := svc.Healthcheck["test"].([]any); len(test) == 0 {
			t.Errorf("%s: service %q has no healthcheck test", k, cs.name)
		}
		// The same URL shape as the servers testserver starts (the user
		// may differ: the compose MariaDB's root creates users in tests).
		if want := withoutUser(urlPrefix[k]) + port; !strings.HasPrefix(withoutUser(ComposeURLs[k]), want) {
			t.Errorf("%s: ComposeURLs %q, want prefix %q", k, ComposeURLs[k], want)
		}
	}
}

// TestComposeURLsDocumented: every ComposeURLs value appears verbatim in
// README.md, next to its variable.
func TestComposeURLsDocumented(t *testing.T) {
	var docs []string
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"README.md"} {
		if b, err := os.ReadFile(filepath.Join(root, name)); err == nil {
			docs = append(docs, string(b))
		}
	}
	if len(docs) == 0 {
		t.Fatal("README.md does not exist")
	}
	for _, k := range Kinds {
		ok := false
		for _, d := range docs {
			if strings.Contains(d, ComposeURLs[k]) && strings.Contains(d, k.EnvVar()) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: README.md does not have %s and %s", k, k.EnvVar(), ComposeURLs[k])
		}
	}
}

// withoutUser drops the user information of a URL ("scheme://user:pw@host"
// → "scheme://host").
func withoutUser(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	if at := strings.Index(rest, "@"); at >= 0 && !strings.ContainsAny(rest[:at], "/?") {
		rest = rest[at+1:]
	}
	return scheme + "://" + rest
}
