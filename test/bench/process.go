package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// child is a proxy process the bench started: in its own process group so
// that stop reaches anything it forks, with SIGKILL as parent-death signal so
// that even a bench killed with SIGKILL leaves nothing running.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// startChild starts path with args; stdout and stderr go to logPath.
func startChild(name, logPath string, env []string, path string, args ...string) (*child, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("%s: start %s: %w", name, path, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, logFile: lf, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// pid is the process id, for /proc readings.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, and SIGKILL if it has not exited
// within grace. It is safe to call more than once.
func (c *child) stop(grace time.Duration) {
	if !c.exited() {
		_ = syscall.Kill(-c.pid(), syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(grace):
			_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
			<-c.done
		}
	}
	// Anything the process forked into its group goes too.
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	c.logFile.Close()
}

// exitReason says why a process that never became ready ended, from the
// last meaningful line of its log: a JSON log entry's msg and error fields,
// or the plain text.
func (c *child) exitReason() string {
	status := "still running"
	if c.exited() {
		status = "exited"
		if c.waitErr != nil {
			status = c.waitErr.Error()
		}
	}
	line := lastLogLine(c.logPath)
	if line == "" {
		return status + ", no output"
	}
	return line + " (" + status + ")"
}

// lastLogLine returns the last non-empty line of a log, preferring error
// entries of a JSON log, shortened for a table cell.
func lastLogLine(path string) string {
	last, problem := scanLog(path, "error", "fatal", "panic", "dpanic")
	if problem != "" && !strings.HasPrefix(last, "tcpmapd:") {
		return problem
	}
	return last
}

// lastProblem returns the last warning or error a proxy logged (the last
// line of a plain-text log unless it is the go relay's "ready"), or "".
func (c *child) lastProblem() string {
	last, problem := scanLog(c.logPath, "warn", "error", "fatal", "panic", "dpanic")
	if problem != "" {
		return problem
	}
	if last == "ready" {
		return ""
	}
	return last
}

// scanLog returns the last non-empty line of a log and the last JSON entry
// whose level is one of levels, each as "msg: error" for JSON entries.
func scanLog(path string, levels ...string) (last, problem string) {
	f, err := os.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil {
			msg, _ := e["msg"].(string)
			if s, ok := e["error"].(string); ok {
				msg += ": " + s
			}
			if lvl, _ := e["level"].(string); slices.Contains(levels, lvl) {
				problem = msg
			}
			line = msg
		}
		last = line
	}
	return shorten(last), shorten(problem)
}

func shorten(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

// errUnavailable marks a proxy that cannot run here (not installed, not
// implemented, refused to start): its column says so and the run goes on.
var errUnavailable = errors.New("unavailable")

type unavailableError struct{ reason string }

func (e *unavailableError) Error() string { return "unavailable: " + e.reason }
func (e *unavailableError) Is(target error) bool {
	return target == errUnavailable
}

func unavailable(format string, args ...any) error {
	return &unavailableError{reason: fmt.Sprintf(format, args...)}
}
