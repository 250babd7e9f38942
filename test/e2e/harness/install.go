package harness

import (
	"fmt"
	"os"
	"path/filepath"
)

// InstallFile copies the host file src to dst (an absolute path inside the root tree) with
// mode, creating the directories on the way.
func InstallFile(tree, dst, src string, mode os.FileMode) error {
	target := filepath.Join(tree, dst)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	if err := copyFile(src, target, mode); err != nil {
		return fmt.Errorf("install %s as %s: %w", src, dst, err)
	}
	return os.Chmod(target, mode) // copyFile's mode is subject to the umask
}

// EnableUnit enables a unit installed in /etc/systemd/system of the tree for target, as
// `systemctl enable` does for WantedBy=target.
func EnableUnit(tree, unit, target string) error {
	wants := filepath.Join(tree, "etc/systemd/system", target+".wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(tree, "etc/systemd/system", unit)); err != nil {
		return fmt.Errorf("enable %s: %w", unit, err)
	}
	link := filepath.Join(wants, unit)
	_ = os.Remove(link)
	return os.Symlink("/etc/systemd/system/"+unit, link)
}
