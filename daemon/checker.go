package daemon

import (
	"errors"
	"net/http"

	"github.com/flashsync/flashsync/consistency"
	"github.com/flashsync/flashsync/internal/httpapi"
)

// RoleChecker is the consistency checker: it samples the canal's
// invalidations and reads the keys back from every Redis replica after
// each window (package consistency, docs/consistency.md).
const RoleChecker = "checker"

// buildChecker builds the checker role on the daemon's nsqd addresses.
func (n *Daemon) buildChecker() error {
	cfg := n.cfg
	if !cfg.CheckerConfigured() {
		return errors.New("checker role: config has no [checker]")
	}
	if len(cfg.RedisGroups) == 0 {
		return errors.New("checker role: config has no [[redis_group]]")
	}
	o := cfg.CheckerOptions()
	o.NSQDTCP, o.Logger, o.Registerer = n.nsqdTCP, n.log.With("role", RoleChecker), n.registry
	var err error
	n.checker, err = consistency.New(o)
	if err != nil {
		return err
	}
	n.own(RoleChecker, n.checker.Close)
	return nil
}

// errNoChecker answers GET /consistency of a daemon without the checker.
var errNoChecker = httpapi.Wrap(http.StatusNotFound, errors.New("no consistency checks here: this flashsync process does not run the checker role ([checker])"))

// getConsistency answers GET /consistency: the checks per window since
// start and the last inconsistencies, newest first.
func (n *Daemon) getConsistency(w http.ResponseWriter, r *http.Request) error {
	if n.checker == nil {
		return errNoChecker
	}
	return httpapi.WriteJSON(w, http.StatusOK, n.checker.Report())
}
