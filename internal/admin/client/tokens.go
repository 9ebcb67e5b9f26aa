package client

import (
	"fmt"
	"net/url"
	"strconv"

	"github.com/stepfort/stepfort/internal/admin"
)

// ListTokens returns every token (of status, "" for all), newest first: it
// walks GET /tokens page by page, following nextCursor, so the answer is
// whole however the server pages.
func (c *Client) ListTokens(status string) ([]*admin.Token, error) {
	q := url.Values{"limit": {strconv.Itoa(admin.MaxPageSize)}}
	if status != "" {
		q.Set("status", status)
	}
	all := []*admin.Token{} // "tokens": [] when there are none, as before
	seen := map[string]bool{}
	for {
		var page admin.TokenList
		if err := c.Do("GET", "/tokens?"+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Tokens...)
		if page.NextCursor == "" {
			break
		}
		// A cursor seen before would loop for ever.
		if seen[page.NextCursor] {
			return nil, fmt.Errorf("GET /tokens: the server repeated cursor %q", page.NextCursor)
		}
		seen[page.NextCursor] = true
		q.Set("cursor", page.NextCursor)
	}
	admin.SortNewestFirst(all)
	return all, nil
}
