package memory

import (
	"context"
	"fmt"
	"net/url"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens mem:// URLs.
type URLOpener struct{}

// OpenURL implements driver.URLOpener.
func (*URLOpener) OpenURL(_ context.Context, u *url.URL) (driver.Driver, error) {
	p := driver.NewParams(u)
	maxVal := p.Int("maxvalue", 0)
	if err := p.Err(); err != nil {
		return nil, fmt.Errorf("memory: %w", err)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("memory: URL path %q not allowed: use mem://NAME", u.Path)
	}
	sp := NamedSpace(u.Host)
	if maxVal > 0 {
		sp.mu.Lock()
		sp.maxVal = maxVal
		sp.mu.Unlock()
	}
	return newBackend(sp), nil
}
