package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flashsync/flashsync/admin"
	"github.com/flashsync/flashsync/cmd/internal/cli"
	"github.com/flashsync/flashsync/jobs"
)

// tokenEnv holds the admin API token when -token is not given.
const tokenEnv = "FLASHSYNC_ADMIN_TOKEN"

// pollInterval is how often -wait asks for the job.
const pollInterval = 200 * time.Millisecond

var purgeCommand = &cli.Command{
	Name:    "purge",
	Summary: "purge keys, URLs, tags, rows, patterns, bans or groups through the admin API",
	Usage:   "[-admin URL | -config FILE] [-ca FILE] -token T -reason R [-dry-run] [-wait] KIND...",
	Doc: `Sends one purge request to the admin API (POST /api/v1/purges, docs/admin.md)
and prints its answer: for -dry-run the preview (each group reached, its tier,
replicas, instances or CDN nodes, and targets), for a run the job's id; with
-wait it polls the job until it is done (exit 0) or failed (exit 1), within
-timeout. -json prints the API's JSON instead.

The API is -admin, or the [admin] addr of -config (https:// when it has
tls_cert_file); -ca FILE verifies an https API with that PEM bundle instead of
the system roots. The token is -token or $` + tokenEnv + ` (which keeps it out
of the process list).

With [admin] flush_needs_approval, a flush is held for a second admin: purge
prints "approval <id> pending ..." and exits 0, even with -wait.

KIND is one or more of the repeatable flags:

  -key K [-group G]...      Redis keys, in the groups named (default every one)
  -url U, -tag T            URLs and xkey tags, in every HTTP group and the CDN
  -row 'shop.item id=42'    a row by its primary key: table, then col=value
                            pairs separated by commas or spaces; an integer is
                            sent as a JSON number, any other value as a string
  -pattern P [-group G]...  Redis globs (admin role)
  -ban REGEX                URL regex bans on the HTTP instances (admin role)
  -flush-group NAME         empty a Redis group (admin role); with -confirm NAME

A pattern without a literal prefix must be named in -confirm too.

Exit codes: 0 done, 1 refused by the API (its error), failed or timed out,
2 a wrong command line.`,
	Flags: func(fs *flag.FlagSet) cli.Action {
		var f purgeFlags
		f.define(fs)
		return func(ctx context.Context, env cli.Env, _ []string) error {
			body, err := f.request()
			if err != nil {
				return err
			}
			token, err := f.bearer()
			if err != nil {
				return err
			}
			base, err := f.baseURL()
			if err != nil {
				return err
			}
			client, err := f.httpClient()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(ctx, f.timeout)
			defer cancel()
			c := &adminClient{base: base, token: token, http: client}
			return c.purge(ctx, env.Stdout, body, f.wait, f.json, f.timeout)
		}
	},
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ", ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// purgeFlags are purge's command line.
type purgeFlags struct {
	adminURL, configPath, ca  string
	configSet                 bool
	token, reason             string
	dryRun, wait, json        bool
	timeout                   time.Duration
	keys, groups, urls, tags  list
	rows, patterns, bans      list
	flushGroups, confirmNames list
}

func (f *purgeFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&f.adminURL, "admin", "", "the admin API's `URL` (http://host:port); wins over -config")
	fs.Func("config", "TOML config `file` whose [admin] addr is the API (default configs/dev.toml)", func(v string) error {
		f.configPath, f.configSet = v, true
		return nil
	})
	fs.StringVar(&f.ca, "ca", "", "a PEM `file` of the CAs that verify an https API (default the system roots)")
	fs.StringVar(&f.token, "token", "", "the API `token` (default $"+tokenEnv+")")
	fs.StringVar(&f.reason, "reason", "", "why you purge (required; the audit and the job keep it)")
	fs.BoolVar(&f.dryRun, "dry-run", false, "preview only: publish nothing")
	fs.BoolVar(&f.wait, "wait", false, "poll the job until it is done or failed")
	fs.BoolVar(&f.json, "json", false, "print the API's JSON answers")
	fs.DurationVar(&f.timeout, "timeout", time.Minute, "bound of the request and, with -wait, of the wait")
	fs.Var(&f.keys, "key", "a Redis `key` to purge (repeatable)")
	fs.Var(&f.groups, "group", "a Redis `group` for -key and -pattern (repeatable; default every group)")
	fs.Var(&f.urls, "url", "a `URL` to purge (repeatable)")
	fs.Var(&f.tags, "tag", "an xkey `tag` to purge (repeatable)")
	fs.Var(&f.rows, "row", "a `row` by its primary key: 'db.table col=value[,col=value]' (repeatable)")
	fs.Var(&f.patterns, "pattern", "a Redis glob `pattern` (admin role; repeatable)")
	fs.Var(&f.bans, "ban", "a URL `regex` to ban on the HTTP instances (admin role; repeatable)")
	fs.Var(&f.flushGroups, "flush-group", "a Redis `group` to flush (admin role; repeatable; needs -confirm)")
	fs.Var(&f.confirmNames, "confirm", "confirm a flushed group or a pattern without a literal prefix by `name` (repeatable)")
}

// request builds the body of POST /api/v1/purges and checks it as the API
// will: a body the API would refuse as malformed is a wrong command line.
func (f *purgeFlags) request() ([]byte, error) {
	q := admin.PurgeRequest{Reason: f.reason, DryRun: f.dryRun, Keys: f.keys, Groups: f.groups, URLs: f.urls, Tags: f.tags,
		Patterns: f.patterns, Bans: f.bans, FlushGroups: f.flushGroups, Confirm: f.confirmNames}
	if strings.TrimSpace(f.reason) == "" {
		return nil, cli.Usagef("-reason is required: say why you purge (the audit keeps it)")
	}
	if len(f.keys)+len(f.urls)+len(f.tags)+len(f.rows)+len(f.patterns)+len(f.bans)+len(f.flushGroups) == 0 {
		return nil, cli.Usagef("nothing to purge: give -key, -url, -tag, -row, -pattern, -ban or -flush-group")
	}
	for _, r := range f.rows {
		ref, err := parseRow(r)
		if err != nil {
			return nil, cli.Usagef("-row %q: %v", r, err)
		}
		q.Rows = append(q.Rows, ref)
	}
	body, err := json.Marshal(q)
	if err != nil {
		return nil, err
	}
	if _, err := admin.DecodePurgeRequest(body); err != nil {
		return nil, cli.Usagef("%v", err)
	}
	return body, nil
}

// parseRow parses 'db.table col=value[,col=value]': the table, then pairs
// separated by commas or spaces. A value that is an integer as Go prints
// one ("42", "-7"; not "007" or "+7") is a JSON number, any other a string.
func parseRow(s string) (admin.RowRef, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	if len(fields) < 2 || strings.Contains(fields[0], "=") {
		return admin.RowRef{}, errors.New("want db.table col=value[,col=value]")
	}
	ref := admin.RowRef{Table: fields[0], Key: map[string]any{}}
	for _, kv := range fields[1:] {
		col, v, ok := strings.Cut(kv, "=")
		if !ok || col == "" {
			return admin.RowRef{}, fmt.Errorf("%q: want col=value", kv)
		}
		if _, dup := ref.Key[col]; dup {
			return admin.RowRef{}, fmt.Errorf("column %s given twice", col)
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && strconv.FormatInt(n, 10) == v {
			ref.Key[col] = n
		} else {
			ref.Key[col] = v
		}
	}
	return ref, nil
}

func (f *purgeFlags) bearer() (string, error) {
	t := f.token
	if t == "" {
		t = os.Getenv(tokenEnv)
	}
	if t = strings.TrimSpace(t); t == "" {
		return "", cli.Usagef("no token: give -token or set $%s", tokenEnv)
	}
	return t, nil
}

// baseURL is -admin, or the [admin] addr of the config.
func (f *purgeFlags) baseURL() (string, error) {
	if f.adminURL != "" {
		u := f.adminURL
		if !strings.Contains(u, "://") {
			u = "http://" + u
		}
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return "", cli.Usagef("-admin %q: want http://host:port", f.adminURL)
		}
		return strings.TrimRight(u, "/"), nil
	}
	path := f.configPath
	if !f.configSet {
		path = "configs/dev.toml"
	}
	cfg, err := cli.LoadConfig(path)
	if err != nil {
		return "", err
	}
	if !cfg.AdminConfigured() {
		return "", fmt.Errorf("%s has no [admin]: give -admin URL", path)
	}
	host, port, err := net.SplitHostPort(cfg.Admin.Addr)
	if err != nil {
		return "", fmt.Errorf("%s: [admin] addr %q: %w", path, cfg.Admin.Addr, err)
	}
	// A listener on every address is reached on the loopback.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	scheme := "http://"
	if cfg.Admin.TLSCertFile != "" {
		scheme = "https://"
	}
	return scheme + net.JoinHostPort(host, port), nil
}

// httpClient is the API's client: with -ca, verifying the server by
// those CAs only.
func (f *purgeFlags) httpClient() (*http.Client, error) {
	if f.ca == "" {
		return http.DefaultClient, nil
	}
	pem, err := os.ReadFile(f.ca)
	if err != nil {
		return nil, fmt.Errorf("-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-ca %s: no PEM certificate", f.ca)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}

// adminClient calls the admin API.
type adminClient struct {
	base, token string
	http        *http.Client
}

// apiError is an error answer of the API.
type apiError struct {
	Status  int
	Message string `json:"error"`
	Code    string `json:"code"`
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("%s (HTTP %d", e.Message, e.Status)
	if e.Code != "" {
		s += ", " + e.Code
	}
	return s + ")"
}

// call sends a request and returns the body of a 2xx answer; any other is
// an *apiError with the server's error text.
func (c *adminClient) call(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		return data, nil
	}
	e := &apiError{Status: resp.StatusCode}
	if json.Unmarshal(data, e) != nil || e.Message == "" {
		e.Message = strings.TrimSpace(string(data))
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	return nil, e
}

// purge posts body, prints the answer and, with wait, waits for the job.
func (c *adminClient) purge(ctx context.Context, w io.Writer, body []byte, wait, asJSON bool, timeout time.Duration) error {
	data, err := c.call(ctx, http.MethodPost, "/api/v1/purges", body)
	if err != nil {
		return err
	}
	var p admin.Preview
	if err := json.Unmarshal(data, &p); err != nil {
		return fmt.Errorf("the API's answer: %w", err)
	}
	var held admin.ApprovalAnswer
	if err := json.Unmarshal(data, &held); err != nil {
		return fmt.Errorf("the API's answer: %w", err)
	}
	switch {
	case held.Approval != nil && asJSON:
		return writeIndented(w, data)
	case held.Approval != nil:
		a := held.Approval
		_, err := fmt.Fprintf(w, "approval %s pending: a second admin approves it (POST /api/v1/approvals/%s/approve, or on the page) before %s; it then runs as job %s\n",
			a.ID, a.ID, a.Expires.Local().Format(time.RFC3339), a.Job)
		return err
	case asJSON:
		if err := writeIndented(w, data); err != nil {
			return err
		}
	case p.DryRun:
		return writePreview(w, &p)
	default:
		if _, err := fmt.Fprintf(w, "job %s\n", p.Job); err != nil {
			return err
		}
	}
	if p.DryRun || !wait {
		return nil
	}
	if p.Job == "" {
		return errors.New("the API answered no job")
	}
	return c.waitJob(ctx, w, p.Job, asJSON, timeout)
}

// waitJob polls the job until it is done (nil) or failed (an error), or ctx
// ends.
func (c *adminClient) waitJob(ctx context.Context, w io.Writer, id string, asJSON bool, timeout time.Duration) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last jobs.Job
	for {
		data, err := c.call(ctx, http.MethodGet, "/api/v1/jobs/"+url.PathEscape(id), nil)
		switch {
		case err == nil:
			if err := json.Unmarshal(data, &last); err != nil {
				return fmt.Errorf("job %s: the API's answer: %w", id, err)
			}
			if last.State == jobs.StateDone || last.State == jobs.StateFailed {
				if asJSON {
					if err := writeIndented(w, data); err != nil {
						return err
					}
				} else if err := writeJob(w, &last); err != nil {
					return err
				}
				if last.State == jobs.StateFailed {
					return fmt.Errorf("job %s failed: %d of %d targets failed", id, last.Failed, last.Done+last.Pending+last.Failed)
				}
				return nil
			}
		case ctx.Err() == nil:
			return fmt.Errorf("job %s: %w", id, err)
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("job %s: not finished within -timeout %v (%d done, %d pending, %d failed)", id, timeout, last.Done, last.Pending, last.Failed)
			}
			// Not ctx.Err(): an interrupted wait is not a success.
			return fmt.Errorf("job %s: wait interrupted (%d done, %d pending, %d failed)", id, last.Done, last.Pending, last.Failed)
		case <-tick.C:
		}
	}
}

func writeIndented(w io.Writer, data []byte) error {
	var b bytes.Buffer
	if err := json.Indent(&b, data, "", "  "); err != nil {
		return fmt.Errorf("the API's answer: %w", err)
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}

// writePreview prints a dry run's preview: notes, each row's rules, each
// group with its members and targets, the counts.
func writePreview(w io.Writer, p *admin.Preview) error {
	var b strings.Builder
	fmt.Fprintf(&b, "dry run: nothing was purged (reason: %s)\n", p.Reason)
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	for _, r := range p.Rows {
		var fired []string
		for _, re := range r.Rules {
			if re.Fired {
				fired = append(fired, re.Rule)
			}
		}
		fmt.Fprintf(&b, "row %s: rules %s\n", r.Table, strings.Join(fired, ", "))
	}
	b.WriteString("\n")
	for _, gp := range p.Purges {
		members := "replicas " + strings.Join(gp.Replicas, ", ")
		switch {
		case len(gp.Instances) > 0:
			members = "instances " + strings.Join(gp.Instances, ", ")
		case len(gp.Nodes) > 0:
			members = "nodes " + strings.Join(gp.Nodes, ", ")
		}
		topic := ""
		if gp.Topic != "" {
			topic = ", topic " + gp.Topic
		}
		fmt.Fprintf(&b, "%s %s (%s%s)\n", gp.Tier, gp.Group, members, topic)
		if gp.Flush {
			b.WriteString("    flush\n")
		}
		for _, t := range []struct {
			kind    string
			targets []string
		}{{"key", gp.Keys}, {"pattern", gp.Patterns}, {"url", gp.URLs}, {"tag", gp.Tags}, {"ban", gp.Bans}} {
			for _, v := range t.targets {
				fmt.Fprintf(&b, "    %s %s\n", t.kind, v)
			}
		}
	}
	c := p.Counts
	fmt.Fprintf(&b, "\ncounts: %d keys, %d patterns, %d flushes, %d urls, %d tags, %d bans; %d targets\n",
		c.Keys, c.Patterns, c.Flushes, c.URLs, c.Tags, c.Bans, c.Targets)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeJob prints a finished job: its state and counts, and each failed
// target's error.
func writeJob(w io.Writer, j *jobs.Job) error {
	var b strings.Builder
	fmt.Fprintf(&b, "job %s %s: %d done, %d failed", j.ID, j.State, j.Done, j.Failed)
	if j.LatencyMS > 0 {
		fmt.Fprintf(&b, " in %.1f ms", j.LatencyMS)
	}
	b.WriteString("\n")
	for _, t := range j.Targets {
		if t.State == jobs.StateFailed {
			fmt.Fprintf(&b, "  failed: %s %s %s: %s\n", t.Tier, t.Group, t.Target, t.Error)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
