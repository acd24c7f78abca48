package stacktest

import "syscall"

// sysProcAttr makes the kernel kill a server if the test binary dies without
// stopping it (panic, timeout), so that no orphan keeps holding its port.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
