package cacheaside_test

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuUsed is the CPU time this process and the processes pids have used so
// far (ok false if it cannot be read): getrusage for the benchmark's
// readers, and for the single-threaded redis-servers the run time of
// their main thread from /proc/<pid>/schedstat (nanoseconds, unlike the
// clock ticks of /proc/<pid>/stat).
func cpuUsed(pids []int) (self, others time.Duration, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, false
	}
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/schedstat")
		if err != nil {
			return 0, 0, false
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, 0, false
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, false
		}
		others += time.Duration(ns)
	}
	return self, others, true
}
