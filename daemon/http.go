package daemon

import (
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/invalidate"
	"github.com/flashsync/flashsync/purge"
)

func (n *Daemon) mux() *http.ServeMux {
	mux := http.NewServeMux()
	// Profiles for operators; the listener is loopback unless configured.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.registry, promhttp.HandlerOpts{Registry: n.registry}))
	mux.Handle("GET /healthz", httpapi.Handler(n.log, n.healthz))
	mux.Handle("POST /rules/explain", httpapi.Handler(n.log, n.explainRules))
	mux.Handle("GET /jobs", httpapi.Handler(n.log, n.listJobs))
	mux.Handle("GET /jobs/{id}", httpapi.Handler(n.log, n.getJob))
	mux.Handle("GET /consistency", httpapi.Handler(n.log, n.getConsistency))
	if n.seckill != nil {
		mux.Handle("POST /seckill/activities/{id}/reconcile", n.seckill.ReconcileHandler())
	}
	return mux
}

// errNoJobs answers the job endpoints of a daemon without the canal role.
var errNoJobs = httpapi.Wrap(http.StatusNotFound, errors.New("no purge jobs here: this flashsync process does not run the canal role (nor the admin role)"))

// getJob answers GET /jobs/{id}: the job's state, per group and per target.
func (n *Daemon) getJob(w http.ResponseWriter, r *http.Request) error {
	if n.jobs == nil {
		return errNoJobs
	}
	id := r.PathValue("id")
	j, ok := n.jobs.Get(id)
	if !ok {
		return httpapi.Errorf(http.StatusNotFound, "job %q unknown (never published here, or evicted)", id)
	}
	return httpapi.WriteJSON(w, http.StatusOK, j)
}

// maxJobsLimit bounds GET /jobs?limit=.
const maxJobsLimit = 1000

// listJobs answers GET /jobs?limit=N (default 50): the recent jobs, newest
// first, without their targets.
func (n *Daemon) listJobs(w http.ResponseWriter, r *http.Request) error {
	if n.jobs == nil {
		return errNoJobs
	}
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		l, err := strconv.Atoi(v)
		if err != nil || l < 1 || l > maxJobsLimit {
			return httpapi.Errorf(http.StatusBadRequest, "limit %q: want 1 to %d", v, maxJobsLimit)
		}
		limit = l
	}
	return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"jobs": n.jobs.Recent(limit), "tracked": n.jobs.Len()})
}

// maxExplainBody bounds a POST /rules/explain body.
const maxExplainBody = 1 << 20

// explainRules answers POST /rules/explain: the body is a row change,
// {"table": "db.table", "before": {...}, "after": {...}} with an optional
// "action"; the answer is the invalidate.Explanation as JSON. Nothing is
// published. Bad input is a 400 naming the problem.
func (n *Daemon) explainRules(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxExplainBody))
	if err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "read body: %w", err)
	}
	q, err := invalidate.ParseExplainRequest(body)
	if err != nil {
		return httpapi.Wrap(http.StatusBadRequest, err)
	}
	e, err := n.rules.ExplainRequest(q)
	if err != nil {
		return httpapi.Wrap(http.StatusBadRequest, err)
	}
	e.SetTopics(n.cfg.NSQ.TopicPrefix)
	return httpapi.WriteJSON(w, http.StatusOK, e)
}

type health struct {
	Status   string            `json:"status"`
	Roles    map[string]string `json:"roles"`
	Position string            `json:"position,omitempty"`
	// Replicas are the purger role's Redis replicas: each one's applied
	// watermark, staleness and why it does not advance.
	Replicas []purge.ReplicaStatus `json:"replicas,omitempty"`
}

// healthz answers 200 while every role is healthy and 503 otherwise, with
// each role's state.
func (n *Daemon) healthz(w http.ResponseWriter, r *http.Request) error {
	h := health{Status: "ok", Roles: map[string]string{}}
	if n.canal != nil {
		h.Roles[RoleCanal] = n.canal.State()
		h.Position = n.canal.Position().String()
	}
	if n.purger != nil {
		h.Roles[RoleRedisPurger] = "ok"
		if err := n.purger.Health(); err != nil {
			h.Roles[RoleRedisPurger] = err.Error()
			h.Status = "degraded"
		}
		h.Replicas = n.purger.Replicas()
	}
	if n.httpPurger != nil {
		h.Roles[RoleHTTPPurger] = "ok"
		if err := n.httpPurger.Health(); err != nil {
			h.Roles[RoleHTTPPurger] = err.Error()
			h.Status = "degraded"
		}
	}
	if n.dispatcher != nil {
		h.Roles[RoleDispatcher] = "ok"
		if err := n.dispatcher.Health(); err != nil {
			h.Roles[RoleDispatcher] = err.Error()
			h.Status = "degraded"
		}
	}
	if n.console != nil {
		h.Roles[RoleConsole] = "ok"
	}
	if n.admin != nil {
		h.Roles[RoleAdmin] = "ok"
	}
	if n.checker != nil {
		h.Roles[RoleChecker] = "ok"
	}
	if n.seckill != nil {
		h.Roles[RoleSeckill] = "ok"
		if err := n.seckill.Health(r.Context()); err != nil {
			h.Roles[RoleSeckill] = err.Error()
			h.Status = "degraded"
		}
	}
	status := http.StatusOK
	if h.Status != "ok" {
		status = http.StatusServiceUnavailable
	}
	return httpapi.WriteJSON(w, status, h)
}
