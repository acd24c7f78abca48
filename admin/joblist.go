package admin

import (
	"net/http"

	"github.com/flashsync/flashsync/internal/httpapi"
	"github.com/flashsync/flashsync/jobs"
)

// manualScan bounds the jobs read to find the manual ones (the job store
// keeps 10000 by default).
const manualScan = 10000

// listJobs answers GET /api/v1/jobs?limit=N (default 50; viewer and up):
// the job store's newest jobs, newest first, each with its counts per
// group but not its targets (GET /api/v1/jobs/{id} has them). The binlog's
// jobs are there too, when the canal runs in this process: they have no
// started_by, and ?manual=true leaves them out.
func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.authenticate(w, r); err != nil {
		return s.count(actionJobs, err)
	}
	limit, err := limitParam(r)
	if err != nil {
		return s.count(actionJobs, err)
	}
	var list []jobs.Job
	switch m := r.URL.Query().Get("manual"); m {
	case "", "false":
		list = s.opts.Jobs.Recent(limit)
	case "true":
		list = []jobs.Job{}
		for _, j := range s.opts.Jobs.Recent(manualScan) {
			if len(list) == limit {
				break
			}
			if j.StartedBy != "" {
				list = append(list, j)
			}
		}
	default:
		return s.count(actionJobs, httpapi.Errorf(http.StatusBadRequest, "manual %q: want true or false", m))
	}
	s.count(actionJobs, nil)
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, map[string]any{"jobs": list})
}
