package claim_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stampede-go/stampede/claim"
)

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
