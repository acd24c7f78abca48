package purge

import (
	"testing"

	"github.com/flashsync/flashsync/invalidate"
)

// Every purger refuses the admin-only kinds of another tier (retried, then
// dead-lettered) instead of acking a message it did not apply.
func TestCanApply(t *testing.T) {
	flush := &invalidate.Purge{V: 2, Flush: true}
	patterns := &invalidate.Purge{V: 2, Patterns: []string{"item:*"}}
	bans := &invalidate.Purge{V: 2, Bans: []string{"^/item/"}}
	keys := &invalidate.Purge{V: 1, Keys: []string{"k"}}
	for _, tt := range []struct {
		tier       invalidate.Tier
		ok, refuse []*invalidate.Purge
	}{
		{invalidate.TierRedis, []*invalidate.Purge{flush, patterns, keys}, []*invalidate.Purge{bans}},
		{invalidate.TierHTTP, []*invalidate.Purge{bans, keys}, []*invalidate.Purge{flush, patterns}},
		{invalidate.TierCDN, []*invalidate.Purge{keys}, []*invalidate.Purge{flush, patterns, bans}},
	} {
		k := ConsumerKind{Tier: tt.tier, Noun: string(tt.tier)}
		for _, m := range tt.ok {
			if err := k.canApply(m); err != nil {
				t.Errorf("%s refuses %+v: %v", tt.tier, m, err)
			}
		}
		for _, m := range tt.refuse {
			if err := k.canApply(m); err == nil {
				t.Errorf("%s accepts %+v", tt.tier, m)
			}
		}
	}
}
