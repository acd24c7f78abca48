package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// The page's panels in a browser: the health of every target, a flush
// held for a second admin who approves it on the page, the job's progress
// until done, and a viewer's page without a button that changes anything.
func TestPagePanelsInBrowser(t *testing.T) {
	f := newPageFixture(t, approvalAdminLines())
	shots := t.TempDir()
	ga := []*redis.Client{stacktest.Redis(t, f.ga[0].Addr()), stacktest.Redis(t, f.ga[1].Addr())}
	for _, c := range ga {
		fill(t, c, f.keyPre+"panel:", 50)
	}
	// healthRows is the health table as "tier group target state".
	const healthRows = `Array.from(document.querySelectorAll("#health tbody tr[data-tier]")).map(tr =>
		[tr.dataset.tier, tr.dataset.group, tr.dataset.target, tr.querySelector(".state").textContent].join(" "))`
	requester := newBrowser(t, 90*time.Second)

	t.Run("health lists every replica and instance up", func(t *testing.T) {
		pageLogin(t, requester, f.url, adminToken)
		want := []string{
			"redis ga " + f.ga[0].Addr() + " up", "redis ga " + f.ga[1].Addr() + " up",
			"http varnish " + f.varnish.Addr() + " up", "http varnish " + f.varnish2.Addr() + " up",
		}
		var rows []string
		stacktest.Eventually(t, 20*time.Second, func() error {
			var err error
			if rows, err = chromedp.Run(requester, chromedp.Evaluate[[]string](healthRows)); err != nil {
				return err
			}
			if !slices.Equal(rows, want) {
				return fmt.Errorf("health panel %q, want %q", rows, want)
			}
			return nil
		})
		summary, err := chromedp.Run(requester, chromedp.Text(chromedp.ID("health-summary")))
		if err != nil || !strings.HasPrefix(summary, "4 targets, 0 down; checked ") {
			t.Errorf("health summary %q (%v)", summary, err)
		}
		// A laptop screen: nothing wider than the window.
		width, err := chromedp.Run(requester, chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
		if err != nil || width > 1366 {
			t.Errorf("page %d px wide (%v), want at most 1366", width, err)
		}
		screenshot(t, requester, shots, "5-admin-health")
	})

	var approvalID string
	t.Run("an admin's flush is held", func(t *testing.T) {
		if err := chromedp.Do(requester,
			chromedp.SetValue(chromedp.ID("kind"), "flush_groups"),
			chromedp.SendKeys(chromedp.ID("targets"), "ga"),
			chromedp.WaitVisible(chromedp.ID("confirm-row")),
			chromedp.WaitVisible(chromedp.ID("approval-note")),
			chromedp.SendKeys(chromedp.ID("confirm"), "ga"),
			chromedp.SendKeys(chromedp.ID("reason"), "poisoned cache"),
			chromedp.Click(chromedp.ID("preview")),
			chromedp.WaitVisible(chromedp.CSS("#preview-table tr[data-tier=redis]")),
			chromedp.Click(chromedp.ID("purge")),
			chromedp.WaitVisible(chromedp.CSS(`#approvals tbody tr[data-state="pending"] button.reject`)),
		); err != nil {
			t.Fatalf("flush on the page: %v", err)
		}
		var err error
		approvalID, err = chromedp.Run(requester, chromedp.Evaluate[string](`document.querySelector('#approvals tbody tr[data-state="pending"]').dataset.approval`))
		if err != nil || approvalID == "" {
			t.Fatalf("held approval on the page: %q %v", approvalID, err)
		}
		heading, _ := chromedp.Run(requester, chromedp.Text(chromedp.CSS("#preview-out h3")))
		if !strings.Contains(heading, "a second admin must approve it (approval "+approvalID+")") {
			t.Errorf("preview heading %q", heading)
		}
		// The requester may withdraw it, not approve it.
		buttons, err := chromedp.Run(requester, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#approvals tbody button")).map(b => b.textContent)`))
		if err != nil || !slices.Equal(buttons, []string{"Withdraw"}) {
			t.Errorf("the requester's buttons %q (%v), want Withdraw only", buttons, err)
		}
		for i, c := range ga {
			if n := dbSize(t, c); n != 50 {
				t.Errorf("ga replica %d holds %d keys before the approval, want 50", i, n)
			}
		}
		screenshot(t, requester, shots, "6-flush-held")
	})

	t.Run("a second admin approves it on the page", func(t *testing.T) {
		if approvalID == "" {
			t.Skip("no held flush")
		}
		approver := newBrowser(t, 90*time.Second)
		pageLogin(t, approver, f.url, admin2Token)
		row := `#approvals tbody tr[data-approval="` + approvalID + `"]`
		if err := chromedp.Do(approver,
			chromedp.WaitVisible(chromedp.CSS(row+" button.approve")),
			chromedp.Click(chromedp.CSS(row+" button.approve")),
			chromedp.WaitVisible(chromedp.CSS(row+`[data-state="approved"]`)),
		); err != nil {
			t.Fatalf("approve on the page: %v", err)
		}
		status, out := f.call(t, "GET", "/api/v1/approvals", viewerToken, "")
		if status != http.StatusOK {
			t.Fatalf("approvals: %d %v", status, out)
		}
		job := out["approvals"].([]any)[0].(map[string]any)["job"].(string)
		jobRow := `#jobs tbody tr[data-job="` + job + `"]`
		if err := chromedp.Do(approver, chromedp.WaitVisible(chromedp.CSS(jobRow+" .state-done"))); err != nil {
			t.Fatalf("job %s done on the page: %v", job, err)
		}
		cells, err := chromedp.Run(approver, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('`+jobRow+` td')).map(td => td.textContent)`))
		if err != nil || len(cells) < 8 || cells[1] != "admin, approved by admin2" || cells[2] != "poisoned cache" || cells[5] != "2" || cells[6] != "0" {
			t.Errorf("job row %q (%v): want started by admin, approved by admin2, 2 done, 0 pending", cells, err)
		}
		for i, c := range ga {
			if n := dbSize(t, c); n != 0 {
				t.Errorf("ga replica %d holds %d keys after the approved flush", i, n)
			}
		}
		screenshot(t, approver, shots, "7-approved-and-done")
	})

	t.Run("an admin re-syncs a filtered table on the page", func(t *testing.T) {
		ctx := context.Background()
		for _, c := range ga {
			for _, id := range []string{"1", "2"} {
				if err := c.Set(ctx, f.keyPre+"item:"+id, "cached", 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := chromedp.Do(requester,
			chromedp.SendKeys(chromedp.ID("resync-table"), f.db+".item"),
			chromedp.SendKeys(chromedp.ID("resync-where"), "id = 2"),
			chromedp.SendKeys(chromedp.ID("resync-rate"), "50"),
			chromedp.SendKeys(chromedp.ID("resync-reason"), "rule changed"),
			chromedp.Click(chromedp.ID("resync-submit")),
			chromedp.WaitVisible(chromedp.CSS(`#tasks tbody tr .state-done`)),
		); err != nil {
			t.Fatalf("re-sync on the page: %v", err)
		}
		// The task is done once its chunk is published; the page shows its
		// job's acks as they come (polled every few seconds once done).
		stacktest.Eventually(t, 20*time.Second, func() error {
			cells, err := chromedp.Run(requester, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('#tasks tbody tr:first-child td')).map(td => td.textContent)`))
			if err != nil || len(cells) < 7 || cells[1] != "resync" || cells[2] != "admin" || cells[3] != "rule changed" || cells[4] != "done" ||
				!strings.HasSuffix(cells[5], " 1/1 rows") || !strings.HasPrefix(cells[6], "1 published, 0 pending, 0 failed") {
				return fmt.Errorf("task row %q (%v): want a done resync of 1/1 rows by admin, 1 job published and acknowledged", cells, err)
			}
			return nil
		})
		value, err := chromedp.Run(requester, chromedp.Evaluate[float64](`document.querySelector('#tasks tbody tr:first-child progress').value`))
		if err != nil || value != 1 {
			t.Errorf("progress bar at %v (%v), want 1", value, err)
		}
		for i, c := range ga {
			if n, err := c.Exists(ctx, f.keyPre+"item:2").Result(); err != nil || n != 0 {
				t.Errorf("ga replica %d still holds item:2 after the re-sync (%v)", i, err)
			}
			if n, err := c.Exists(ctx, f.keyPre+"item:1").Result(); err != nil || n != 1 {
				t.Errorf("ga replica %d lost item:1, which the filter leaves out (%v)", i, err)
			}
		}
		screenshot(t, requester, shots, "7b-resync-done")
	})

	t.Run("a viewer sees no button that changes anything", func(t *testing.T) {
		viewer := newBrowser(t, 60*time.Second)
		pageLogin(t, viewer, f.url, viewerToken)
		if err := chromedp.Do(viewer,
			chromedp.WaitVisible(chromedp.CSS("#approvals tbody tr")),
			chromedp.WaitVisible(chromedp.CSS("#health tbody tr")),
			chromedp.WaitVisible(chromedp.CSS("#jobs tbody tr")),
		); err != nil {
			t.Fatal(err)
		}
		n, err := chromedp.Run(viewer, chromedp.Evaluate[int](`document.querySelectorAll(
			"#purge, button.danger, button.approve, button.reject, button.cancel, #replay-submit, #resync-submit, #task-forms, #kind option.admin-only").length`))
		if err != nil || n != 0 {
			t.Errorf("viewer's page: %d purge, approve, replay, re-sync or cancel buttons (%v)", n, err)
		}
		screenshot(t, viewer, shots, "8-viewer-panels")
	})
}
