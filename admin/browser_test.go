package admin_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"

	"github.com/flashsync/flashsync/internal/stacktest"
)

// chromiumPath finds Debian's chromium (scripts/stack.sh installs it).
func chromiumPath() (string, error) {
	if p, err := exec.LookPath("chromium"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/bin/chromium"); err != nil {
		return "", errors.New("no chromium on PATH nor /usr/bin/chromium (apt-get install chromium)")
	}
	return "/usr/bin/chromium", nil
}

// newBrowser starts a headless Chromium with a fresh profile under the
// test's temp dir, bounded by timeout; it is closed, and its process gone,
// when the test ends.
func newBrowser(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	path, err := chromiumPath()
	stacktest.Require(t, "chromium", err)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(filepath.Join(t.TempDir(), "chromium")),
		chromedp.WindowSize(1366, 900), // a laptop screen
	}
	ctx, cancelTimeout := context.WithTimeout(context.Background(), timeout)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	var proc *os.Process
	t.Cleanup(func() {
		cancelBrowser() // closes the browser and waits for its process
		cancelAlloc()
		cancelTimeout()
		if proc != nil {
			if err := proc.Signal(syscall.Signal(0)); err == nil {
				t.Errorf("chromium (pid %d) still runs after the test", proc.Pid)
			}
		}
	})
	// The first action starts the browser.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		stacktest.Require(t, "chromium", err)
	}
	proc = chromedp.FromContext(bctx).Browser.Process()
	return bctx
}

// screenshot saves the page under the test's temp dir and logs its path.
func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", p)
}

// pageLogin logs in through the page's form (a browser holds one user's
// cookie: each user gets a browser).
func pageLogin(t *testing.T, ctx context.Context, url, token string) {
	t.Helper()
	if err := chromedp.Do(ctx,
		chromedp.Navigate(url+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.ID("app")),
	); err != nil {
		t.Fatalf("log in: %v", err)
	}
}

func TestPageInBrowser(t *testing.T) {
	f := newPageFixture(t)
	shots := t.TempDir()
	keys := []string{f.keyPre + "item:1", f.keyPre + "item:page:1"}
	ga := []*redis.Client{setKeys(t, f.ga[0].Addr(), keys...), setKeys(t, f.ga[1].Addr(), keys...)}

	t.Run("operator previews and purges a row", func(t *testing.T) {
		ctx := newBrowser(t, 90*time.Second)
		pageLogin(t, ctx, f.url, operatorToken)
		user, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("user")))
		if err != nil {
			t.Fatal(err)
		}
		role, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("role")))
		if err != nil {
			t.Fatal(err)
		}
		if user != "operator" || role != "operator" {
			t.Errorf("page shows user %q role %q", user, role)
		}
		// Groups are for keys only.
		if err := chromedp.Do(ctx, chromedp.WaitNotVisible(chromedp.ID("groups-row"))); err != nil {
			t.Fatalf("groups shown for rows: %v", err)
		}
		screenshot(t, ctx, shots, "1-operator-logged-in")

		if err := chromedp.Do(ctx,
			chromedp.SetValue(chromedp.ID("kind"), "rows"),
			chromedp.SendKeys(chromedp.ID("targets"), f.db+".item id=1"),
			chromedp.SendKeys(chromedp.ID("reason"), "stale item 1"),
			chromedp.Click(chromedp.ID("preview")),
			chromedp.WaitVisible(chromedp.CSS("#preview-table td")),
		); err != nil {
			t.Fatalf("preview: %v", err)
		}
		reaches, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#preview-table tr[data-tier]")).map(tr =>
				tr.dataset.tier + " " + tr.dataset.group + ": " + Array.from(tr.querySelectorAll("li.target-node")).map(li => li.textContent).join(" "))`))
		if err != nil {
			t.Fatalf("preview: %v", err)
		}
		want := map[string]bool{
			"redis ga: " + f.ga[0].Addr() + " " + f.ga[1].Addr():          false,
			"http varnish: " + f.varnish.Addr() + " " + f.varnish2.Addr(): false,
		}
		for _, r := range reaches {
			if _, ok := want[r]; ok {
				want[r] = true
			}
		}
		for w, seen := range want {
			if !seen {
				t.Errorf("preview lacks %q: %q", w, reaches)
			}
		}
		for i, c := range ga {
			if n := exists(t, c, keys...); n != 2 {
				t.Errorf("replica %d: a preview purged (%d of 2 keys left)", i, n)
			}
		}
		screenshot(t, ctx, shots, "2-preview")

		if err := chromedp.Do(ctx,
			chromedp.Click(chromedp.ID("purge")),
			chromedp.WaitVisible(chromedp.CSS("#jobs tbody tr .state-done")),
		); err != nil {
			t.Fatalf("purge: %v", err)
		}
		state, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#jobs tbody tr .state")))
		if err != nil {
			t.Fatal(err)
		}
		if state != "done" {
			t.Errorf("job state on the page: %q", state)
		}
		for i, c := range ga {
			if n := exists(t, c, keys...); n != 0 {
				t.Errorf("replica %d still has %d of item 1's keys", i, n)
			}
		}
		if err := chromedp.Do(ctx,
			chromedp.Click(chromedp.ID("audit-refresh")),
			chromedp.WaitVisible(chromedp.CSS("#audit tbody tr")),
		); err != nil {
			t.Fatal(err)
		}
		audit, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#audit tbody")))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(audit, "operator (operator)") || !strings.Contains(audit, "purge") {
			t.Errorf("audit panel: %q", audit)
		}
		screenshot(t, ctx, shots, "3-purged")
	})

	t.Run("viewer sees no purge button", func(t *testing.T) {
		ctx := newBrowser(t, 60*time.Second)
		pageLogin(t, ctx, f.url, viewerToken)
		if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.ID("viewer-note"))); err != nil {
			t.Fatal(err)
		}
		role, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("role")))
		if err != nil {
			t.Fatal(err)
		}
		purgeButtons, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#purge, button.danger").length`))
		if err != nil {
			t.Fatal(err)
		}
		if role != "viewer" || purgeButtons != 0 {
			t.Errorf("viewer page: role %q, %d purge buttons", role, purgeButtons)
		}
		// A viewer may still preview.
		if err := chromedp.Do(ctx,
			chromedp.SendKeys(chromedp.ID("targets"), f.db+".item id=2"),
			chromedp.SendKeys(chromedp.ID("reason"), "look"),
			chromedp.Click(chromedp.ID("preview")),
			chromedp.WaitVisible(chromedp.CSS("#preview-table tr[data-tier=redis]")),
		); err != nil {
			t.Fatalf("viewer preview: %v", err)
		}
		screenshot(t, ctx, shots, "4-viewer")
	})

	t.Run("bad token", func(t *testing.T) {
		ctx := newBrowser(t, 60*time.Second)
		if err := chromedp.Do(ctx,
			chromedp.Navigate(f.url+"/"),
			chromedp.WaitVisible(chromedp.ID("token")),
			chromedp.SendKeys(chromedp.ID("token"), "wrong"),
			chromedp.Click(chromedp.ID("login-submit")),
			chromedp.WaitVisible(chromedp.ID("login-error")),
		); err != nil {
			t.Fatalf("bad login: %v", err)
		}
	})
}
