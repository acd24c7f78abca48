//go:build !linux

package stacktest

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
