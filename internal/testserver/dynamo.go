//go:build unix

package testserver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func init() {
	specs[Dynamo] = &spec{
		nports:     1,
		binary:     lookPath("node"),
		stopSignal: syscall.SIGTERM,
		args: func(s *Server) ([]string, error) {
			cli, err := dynaliteCLI()
			if err != nil {
				return nil, err
			}
			// serve.js wraps cli.js so that a client aborting a request
			// cannot crash the server (dynalite rethrows ECONNRESET).
			a := []string{
				filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(cli))), "serve.js"), "--host", "127.0.0.1", "--port", strconv.Itoa(s.ports[0]),
				"--path", s.dataDir(),
				"--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0",
			}
			return append(a, s.opts.Args...), nil
		},
		ready: readyDynamo,
		url: func(s *Server) string {
			return "dynamodb://stampede?region=us-east-1&endpoint=" + url.QueryEscape("http://"+s.addr)
		},
	}
	// dynalite needs more than node: its package, installed by
	// scripts/install-backends.
	node := specs[Dynamo].binary
	specs[Dynamo].binary = func(ctx context.Context) (string, error) {
		bin, err := node(ctx)
		if err != nil {
			return "", err
		}
		if _, err := dynaliteCLI(); err != nil {
			return "", err
		}
		return bin, nil
	}
}

// readyDynamo makes a ListTables call (dynalite accepts any signature, but
// wants the headers to be there).
func readyDynamo(ctx context.Context, s *Server) error {
	h := map[string]string{
		"Content-Type":  "application/x-amz-json-1.0",
		"X-Amz-Target":  "DynamoDB_20120810.ListTables",
		"X-Amz-Date":    "20200101T000000Z",
		"Authorization": "AWS4-HMAC-SHA256 Credential=stampede/20200101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=0",
	}
	code, body, err := httpDo(ctx, s, "POST", "/", h, "{}")
	if err != nil {
		return err
	}
	if code != 200 || !strings.Contains(body, "TableNames") {
		return fmt.Errorf("dynamo ListTables: %d %s", code, strings.TrimSpace(body))
	}
	return nil
}

func dynaliteCLI() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cli := filepath.Join(root, "tools", "dynalite", "node_modules", "dynalite", "cli.js")
	if _, err := os.Stat(cli); err != nil {
		return "", fmt.Errorf("dynalite not installed (%s; npm ci in tools/dynalite): %w", cli, ErrMissing)
	}
	return cli, nil
}
