package serve

import (
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the daemon listens unless systemd hands it a socket.
const DefaultSocket = "/run/cvmboot/cvmboot.sock"

// listenFDsStart is the first file descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// ActivatedListener returns the socket systemd passed (socket activation), or nil when the
// process was not socket-activated. It follows sd_listen_fds(3): LISTEN_PID must be this
// process, LISTEN_FDS the count of sockets from fd 3 on; the variables are removed so that
// they do not leak to child processes. The daemon serves one socket: more is an error.
func ActivatedListener() (net.Listener, error) {
	pidStr, fdsStr := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if pidStr == "" && fdsStr == "" {
		return nil, nil
	}
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		return nil, fmt.Errorf("socket activation: LISTEN_PID=%q is not a process id", pidStr)
	}
	if pid != os.Getpid() {
		// Meant for another process (inherited through a shell): not ours to take.
		return nil, nil
	}
	n, err := strconv.Atoi(fdsStr)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q is not a count", fdsStr)
	}
	if n != 1 {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%d, expected exactly 1 socket (ListenStream= once in cvmboot-serve.socket)", n)
	}
	unix.CloseOnExec(listenFDsStart)
	if typ, err := unix.GetsockoptInt(listenFDsStart, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
		return nil, fmt.Errorf("socket activation: fd %d is not a stream socket (SO_TYPE %d, %v)", listenFDsStart, typ, err)
	}
	f := os.NewFile(listenFDsStart, "systemd socket")
	defer f.Close() // FileListener dups the descriptor
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("socket activation: fd %d: %w", listenFDsStart, err)
	}
	return l, nil
}

// LookupGroup resolves a group name or number to its id.
func LookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

// ListenUnix binds the Unix socket path with mode, its group gid (-1: keep root's). The
// socket is created under a umask that leaves only the owner in, so it is never reachable by
// others before its mode is set. A stale socket left by a crashed daemon is replaced; a live
// one, or a file that is not a socket, is an error.
func ListenUnix(path string, mode fs.FileMode, gid int) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket (%s): refusing to replace it", path, fi.Mode().Type())
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another daemon is serving on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket: %w", err)
		}
	}
	old := unix.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("giving %s to group %d: %w", path, gid, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	return l, nil
}
