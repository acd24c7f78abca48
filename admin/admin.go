// Package admin is the admin role's API: an on-call engineer purges cache
// keys, URLs, tags and the targets of database rows by hand, through the
// same NSQ path as the binlog (one job per request, with per-target
// progress), after a preview if they like, under a role, and every request
// is audited in MySQL before anything is published. An admin also replays
// a binlog range and re-syncs a table with the current rules: resumable
// tasks, stored in MySQL, each batch one job.
//
// Users present a bearer token; the server knows only its SHA-256 (HashToken).
// Roles rank viewer < operator < admin: a viewer reads jobs and the audit
// and previews purges (dry runs), an operator also purges. Ownership is the
// daemon's rule: New builds (binds the listener, dials nothing), Run serves
// until its context ends, Close releases the listener, once.
package admin

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashsync/flashsync/canal"
	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/jobs"
)

// Defaults of Options (configs' defaults are these).
const (
	DefaultAddr         = "127.0.0.1:18100"
	DefaultMaxBodyBytes = 1 << 20
	// DefaultPublishWait bounds how long a purge request waits for nsqd to
	// acknowledge its batch before it answers 503.
	DefaultPublishWait = 30 * time.Second
)

// Roles of users, lowest first.
const (
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
)

// Roles lists the roles, lowest first.
var Roles = []string{RoleViewer, RoleOperator, RoleAdmin}

// User is one user of the API.
type User struct {
	// Name names the user in the audit and in the jobs they start.
	Name string
	// Role is one of Roles.
	Role string
	// TokenSHA256 is the hex SHA-256 of the user's bearer token.
	TokenSHA256 string
}

// HashToken is the hex SHA-256 of a token, as User.TokenSHA256 holds it.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Publisher publishes a batch and returns once nsqd acknowledged it; the
// daemon's invalidate.Publisher, whose OnPublished feeds the job store.
type Publisher interface {
	Publish(ctx context.Context, b *invalidate.Batch, meta invalidate.Meta) error
}

// Jobs is the job store the publisher's OnPublished feeds.
type Jobs interface {
	Get(id string) (jobs.Job, bool)
	// Recent lists up to n jobs, newest first, without their targets.
	Recent(n int) []jobs.Job
	Describe(id, startedBy, reason string) bool
}

var (
	_ Publisher = (*invalidate.Publisher)(nil)
	_ Jobs      = (*jobs.Store)(nil)
)

// Options configure a Server.
type Options struct {
	// Addr is the API's listen address (default DefaultAddr).
	Addr  string
	Users []User
	// DB is the MySQL server of the audit table and of the rows purged by
	// hand; it is the caller's to close. Rows are read as text (a DSN
	// without parseTime), which is how templates render every value.
	DB *sql.DB
	// AuditDatabase holds the tables admin_audit and admin_tasks, created
	// on first use.
	AuditDatabase string
	// Binlog is the server whose binlog a replay reads (DB's), with the
	// replay reader's own ServerID (default DefaultReplayServerID); no Addr:
	// replays are refused.
	Binlog canal.Source
	// Replay is the replay engine (default canal.Replay).
	Replay ReplayFunc
	// ResyncRowsPerSecond and ResyncChunkRows are a re-sync's pace when
	// its request sets none (defaults DefaultResyncRowsPerSecond,
	// DefaultResyncChunkRows).
	ResyncRowsPerSecond, ResyncChunkRows int
	// TaskLease is how long a running task's heartbeat may be silent
	// before another process resumes it (default DefaultTaskLease).
	TaskLease time.Duration
	// MaxBodyBytes bounds a request body (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// PublishWait bounds one publish (default DefaultPublishWait).
	PublishWait time.Duration
	// AdminActionsPerMinute bounds each user's admin-only purges that run
	// (default DefaultAdminActionsPerMinute), in bursts of as many.
	AdminActionsPerMinute int
	// TLSCertFile and TLSKeyFile (PEM), both set, serve HTTPS; New loads them.
	TLSCertFile, TLSKeyFile string
	// FlushNeedsApproval holds an admin's flush until a second admin
	// approves it, within ApprovalTTL (default DefaultApprovalTTL): approval.go.
	FlushNeedsApproval bool
	ApprovalTTL        time.Duration
	// Health is what GET /api/v1/health needs besides the rules' groups.
	Health HealthOptions
	// Rules route rows, keys, URLs and tags to groups, as the canal's.
	Rules     *invalidate.Rules
	Publisher Publisher
	Jobs      Jobs
	// TopicPrefix and CDNNodes complete the preview: the topics, and the
	// CDN nodes every URL and tag reaches too.
	TopicPrefix string
	CDNNodes    []string
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
}

type user struct {
	name, role string
	rank       int
	hash       [sha256.Size]byte
}

// Server is the admin API.
type Server struct {
	opts     Options
	users    []user
	ln       net.Listener
	closeLn  func() error
	audit    *audit
	requests *prometheus.CounterVec
	sessions *sessions // of the page (page.go)
	limits   limiters
	tasks    *taskStore
	runner   *taskRunner
	tls      *tls.Config // nil: plain HTTP
	flushes  *approvals  // held for a second admin (approval.go)
	health   *health

	closeOnce sync.Once
	closeErr  error
}

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9_.@-]{1,64}$`)

// New checks the options and binds the listener; nothing connects to MySQL
// or NSQ before a request needs it.
func New(opts Options) (*Server, error) {
	switch {
	case opts.DB == nil:
		return nil, errors.New("admin: no database")
	case opts.Rules == nil:
		return nil, errors.New("admin: no rules")
	case opts.Publisher == nil || opts.Jobs == nil:
		return nil, errors.New("admin: no publisher or job store")
	case !identRe.MatchString(opts.AuditDatabase):
		return nil, fmt.Errorf("admin: audit database %q is not a database name", opts.AuditDatabase)
	case len(opts.Users) == 0:
		return nil, errors.New("admin: no user")
	}
	opts.Addr = cmp.Or(opts.Addr, DefaultAddr)
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.PublishWait <= 0 {
		opts.PublishWait = DefaultPublishWait
	}
	if opts.AdminActionsPerMinute <= 0 {
		opts.AdminActionsPerMinute = DefaultAdminActionsPerMinute
	}
	if opts.ApprovalTTL <= 0 {
		opts.ApprovalTTL = DefaultApprovalTTL
	}
	opts.TopicPrefix = cmp.Or(opts.TopicPrefix, invalidate.DefaultTopicPrefix)
	opts.Binlog.ServerID = cmp.Or(opts.Binlog.ServerID, DefaultReplayServerID)
	if opts.Replay == nil {
		opts.Replay = canal.Replay
	}
	opts.ResyncRowsPerSecond = cmp.Or(opts.ResyncRowsPerSecond, DefaultResyncRowsPerSecond)
	opts.ResyncChunkRows = cmp.Or(opts.ResyncChunkRows, DefaultResyncChunkRows)
	if opts.TaskLease <= 0 {
		opts.TaskLease = DefaultTaskLease
	}
	switch {
	case opts.ResyncRowsPerSecond < 1 || opts.ResyncRowsPerSecond > MaxResyncRowsPerSecond:
		return nil, fmt.Errorf("admin: resync rows per second %d: want 1 to %d", opts.ResyncRowsPerSecond, MaxResyncRowsPerSecond)
	case opts.ResyncChunkRows < 1 || opts.ResyncChunkRows > MaxResyncChunkRows:
		return nil, fmt.Errorf("admin: resync chunk rows %d: want 1 to %d", opts.ResyncChunkRows, MaxResyncChunkRows)
	case opts.TaskLease < MinTaskLease:
		return nil, fmt.Errorf("admin: task lease %v: want at least %v", opts.TaskLease, MinTaskLease)
	}
	opts.Logger = cmp.Or(opts.Logger, slog.Default())
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	s := &Server{opts: opts, audit: newAudit(opts.DB, opts.AuditDatabase), sessions: newSessions(DefaultSessionLifetime),
		tasks: newTaskStore(opts.DB, opts.AuditDatabase), flushes: newApprovals(opts.DB, opts.AuditDatabase)}
	s.runner = newTaskRunner(s)
	var err error
	if s.tls, err = loadTLS(opts.TLSCertFile, opts.TLSKeyFile); err != nil {
		return nil, err
	}
	if s.health, err = newHealth(opts.Health); err != nil {
		return nil, err
	}
	for i, u := range opts.Users {
		h, err := hex.DecodeString(u.TokenSHA256)
		switch {
		case !nameRe.MatchString(u.Name):
			return nil, fmt.Errorf("admin: user[%d]: name %q must be 1-64 of [a-zA-Z0-9_.@-]", i, u.Name)
		case slices.ContainsFunc(s.users, func(o user) bool { return o.name == u.Name }):
			return nil, fmt.Errorf("admin: user[%d]: name %q is used twice", i, u.Name)
		case !slices.Contains(Roles, u.Role):
			return nil, fmt.Errorf("admin: user[%d] (%s): unknown role %q (%s)", i, u.Name, u.Role, strings.Join(Roles, ", "))
		case err != nil || len(h) != sha256.Size:
			return nil, fmt.Errorf("admin: user[%d] (%s): token_sha256 is not 64 hex digits", i, u.Name)
		}
		nu := user{name: u.Name, role: u.Role, rank: slices.Index(Roles, u.Role)}
		copy(nu.hash[:], h)
		s.users = append(s.users, nu)
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flashsync_admin_requests_total",
		Help: "Admin API requests by action (purge, dry_run, approval_requested, approve, reject, approvals, job, jobs, audit, health, replay, resync, cancel, task) and result (accepted, refused, failed).",
	}, []string{"action", "result"})
	collectors := append([]prometheus.Collector{s.requests}, s.runner.collectors()...)
	unregister := func() {
		for _, c := range collectors {
			opts.Registerer.Unregister(c)
		}
	}
	for _, c := range collectors {
		if err := opts.Registerer.Register(c); err != nil {
			unregister()
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		unregister()
		return nil, fmt.Errorf("admin: listen: %w", err)
	}
	s.ln, s.closeLn = ln, sync.OnceValue(ln.Close)
	return s, nil
}

// Addr is the bound address of the API.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the API's base URL: https:// under TLS, else http://.
func (s *Server) URL() string {
	if s.tls != nil {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

// Handler serves the API (Run serves it on the listener).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /api/v1/purges", httpapi.Handler(s.opts.Logger, s.purge))
	mux.Handle("GET /api/v1/jobs", httpapi.Handler(s.opts.Logger, s.listJobs))
	mux.Handle("GET /api/v1/jobs/{id}", httpapi.Handler(s.opts.Logger, s.getJob))
	mux.Handle("GET /api/v1/audit", httpapi.Handler(s.opts.Logger, s.listAudit))
	s.mountTasks(mux)
	mux.Handle("GET /api/v1/health", httpapi.Handler(s.opts.Logger, s.getHealth))
	s.mountApprovals(mux)
	s.mountPage(mux)
	return mux
}

// Run serves the API and runs the tasks until ctx ends, then lets the
// requests in hand finish (for up to the publish wait: a purge in hand is
// answered) and stops the tasks, each resumable from its cursor.
func (s *Server) Run(ctx context.Context) error {
	// The tasks stop with ctx (or a failed Serve), the runner after the
	// last of them.
	tasksCtx, stopTasks := context.WithCancel(ctx)
	s.runner.begin(tasksCtx)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		s.runner.run(tasksCtx)
	}()
	defer func() {
		stopTasks()
		<-ran
	}()
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, TLSConfig: s.tls,
		ErrorLog: slog.NewLogLogger(s.opts.Logger.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	ln := onceCloser{s.ln, s.closeLn}
	if s.tls != nil {
		go func() { served <- srv.ServeTLS(ln, "", "") }() // the certificate is TLSConfig's
	} else {
		go func() { served <- srv.Serve(ln) }()
	}
	s.opts.Logger.Info("serving admin api", "addr", s.URL())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutCtx, done := context.WithTimeout(context.Background(), s.opts.PublishWait)
	defer done()
	err := srv.Shutdown(shutCtx)
	if err != nil {
		srv.Close()
	}
	<-served
	return err
}

// Close closes the listener; it is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.closeLn() })
	return s.closeErr
}

// onceCloser is the listener as Serve gets it: Serve closes it, and so may
// Close, once between them.
type onceCloser struct {
	net.Listener
	close func() error
}

func (l onceCloser) Close() error { return l.close() }

var (
	errNoToken = &httpapi.Error{Status: http.StatusUnauthorized, Code: "unauthorized",
		Message: `missing bearer token: send "Authorization: Bearer <token>"`}
	errBadToken = &httpapi.Error{Status: http.StatusUnauthorized, Code: "unauthorized", Message: "unknown token"}
)

// authenticate finds the user of the request's bearer token. Every user's
// hash is compared, in constant time, whichever matches.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (*user, error) {
	if r.Header.Get("Authorization") == "" {
		if u, ok, err := s.cookieUser(r); ok { // the page's session (session.go)
			return u, err
		}
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(tok) == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="flashsync admin"`)
		return nil, errNoToken
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	var found *user
	for i := range s.users {
		if subtle.ConstantTimeCompare(sum[:], s.users[i].hash[:]) == 1 {
			found = &s.users[i]
		}
	}
	if found == nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="flashsync admin", error="invalid_token"`)
		return nil, errBadToken
	}
	return found, nil
}

// forbid refuses u an action that needs role.
func forbid(u *user, what, role string) error {
	return &httpapi.Error{Status: http.StatusForbidden, Code: "forbidden",
		Message: fmt.Sprintf("%s needs the %s role; %s is a %s", what, role, u.name, u.role)}
}

// Results of requests, as the metric and the audit name them.
const (
	resultAccepted = "accepted"
	resultRefused  = "refused"
	resultFailed   = "failed"
)

// result is how a request that ended in err counts.
func result(err error) string {
	switch {
	case err == nil:
		return resultAccepted
	case httpapi.Answer(err).Status < 500:
		return resultRefused
	}
	return resultFailed
}

func (s *Server) count(action string, err error) error {
	s.requests.WithLabelValues(action, result(err)).Inc()
	return err
}
