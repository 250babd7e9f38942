package dm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Without udev nobody creates /dev/mapper/NAME or records the device in udev's database.
// The node is needed to mount the device by name; the database entry is needed after the
// switch to the real root, where systemd and udev take over:
//
//   - systemd (PID 1) enumerates devices tagged "systemd" from /run/udev/tags/systemd/ and
//     reads /run/udev/data/b<major>:<minor>. A device is "plugged" only when it is tagged
//     systemd in the current tags (Q:, database version V:1) and SYSTEMD_READY is not 0;
//     its S: devlinks give the dev-mapper-NAME.device unit that fstab mounts wait for.
//   - udev's coldplug ("udevadm trigger --action=add") re-runs the rules with an "add"
//     event that carries no DM_COOKIE. lvm2's 10-dm.rules then import the old flags from
//     the database (IMPORT{db}) and, unless DM_UDEV_PRIMARY_SOURCE_FLAG=1 (or
//     DM_UDEV_RULES_VSN=1) is found, jump to dm_disable, which sets
//     DM_UDEV_DISABLE_OTHER_RULES_FLAG=1; systemd's 99-systemd.rules turn that into
//     SYSTEMD_READY=0 and the root's device unit never becomes ready.
//
// So the entry carries the primary-source flag and the rules version the activation would
// have stored, the device-mapper name and uuid, the devlinks the dm rules create, and the
// systemd tag. DM_UDEV_DISABLE_* flags and SYSTEMD_READY are left out on purpose: absent
// means "enabled" and "ready", and a stored DISABLE flag would be imported on coldplug.
// The file is mode 01644: udev's sticky bit (OPTIONS+="db_persist", which 10-dm.rules
// sets) keeps it when an initrd cleans the database before switching root.

// udevRulesVersion is DM_UDEV_RULES_VSN as lvm2's 10-dm.rules stored it until 2.03.23
// (Debian 12 ships 2.03.16); the coldplug rules rewrite it with their own version.
const udevRulesVersion = "2"

// deviceID is sd-device's id of a block device: its database and tag file name.
func deviceID(d Device) string { return fmt.Sprintf("b%d:%d", d.Major, d.Minor) }

// UdevDB returns the udev database entry for d, initialized at the given CLOCK_MONOTONIC
// time, in the format systemd's device_update_db writes.
func UdevDB(d Device, initialized time.Duration) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "S:mapper/%s\n", d.Name)
	fmt.Fprintf(&b, "S:disk/by-id/dm-name-%s\n", d.Name)
	if d.UUID != "" {
		fmt.Fprintf(&b, "S:disk/by-id/dm-uuid-%s\n", d.UUID)
	}
	if usec := initialized.Microseconds(); usec > 0 {
		fmt.Fprintf(&b, "I:%d\n", usec)
	}
	b.WriteString("E:DM_UDEV_PRIMARY_SOURCE_FLAG=1\n")
	b.WriteString("E:DM_UDEV_RULES_VSN=" + udevRulesVersion + "\n")
	fmt.Fprintf(&b, "E:DM_NAME=%s\n", d.Name)
	if d.UUID != "" {
		fmt.Fprintf(&b, "E:DM_UUID=%s\n", d.UUID)
	}
	b.WriteString("G:systemd\n") // any tag
	b.WriteString("Q:systemd\n") // current tag
	b.WriteString("V:1\n")       // database version: Q: lines are meaningful
	return []byte(b.String())
}

// WriteUdevDB writes d's database entry below udevDir (normally /run/udev) atomically and
// tags it for systemd.
func WriteUdevDB(udevDir string, d Device, initialized time.Duration) error {
	if err := validateName(d.Name); err != nil {
		return err
	}
	if err := validateUUID(d.UUID); err != nil {
		return err
	}
	dataDir := filepath.Join(udevDir, "data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return fmt.Errorf("udev database for %s: %w", d.Name, err)
	}
	path := filepath.Join(dataDir, deviceID(d))
	tmp, err := os.CreateTemp(dataDir, "."+deviceID(d)+".tmp*")
	if err != nil {
		return fmt.Errorf("udev database for %s: %w", d.Name, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename this finds nothing
	_, werr := tmp.Write(UdevDB(d, initialized))
	cerr := tmp.Chmod(os.ModeSticky | 0o644)
	if err := errors.Join(werr, cerr, tmp.Close()); err != nil {
		return fmt.Errorf("writing udev database %s for %s: %w", path, d.Name, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing udev database %s for %s: %w", path, d.Name, err)
	}
	tagDir := filepath.Join(udevDir, "tags", "systemd")
	if err := os.MkdirAll(tagDir, 0o755); err != nil {
		return fmt.Errorf("udev tag for %s: %w", d.Name, err)
	}
	tag := filepath.Join(tagDir, deviceID(d))
	if err := os.WriteFile(tag, nil, 0o444); err != nil {
		return fmt.Errorf("writing udev tag %s for %s: %w", tag, d.Name, err)
	}
	return nil
}

// MakeNode creates devDir/mapper/NAME as a block node (mode 0600) for d. A node that
// already has d's number is kept; anything else there that is not a directory (a stale
// node of an earlier device with the same name, a symlink) is replaced, since the
// device-mapper name is ours from the moment the device was created.
func MakeNode(devDir string, d Device) error {
	if err := validateName(d.Name); err != nil {
		return err
	}
	path := filepath.Join(devDir, "mapper", d.Name)
	want := unix.Mkdev(d.Major, d.Minor)
	var st unix.Stat_t
	switch err := unix.Lstat(path, &st); {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == want:
		return nil
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return fmt.Errorf("creating device node %s for %s (%s): a directory is in the way", path, d.Name, d.ID())
	case err == nil:
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("replacing stale %s for %s (%s): %w", path, d.Name, d.ID(), err)
		}
	case !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("checking device node %s for %s: %w", path, d.Name, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(want)); err != nil {
		return fmt.Errorf("creating device node %s for %s (%s): %w", path, d.Name, d.ID(), err)
	}
	return nil
}

// WaitForLink waits until devDir/mapper/NAME resolves to d's node, which udev creates from
// the device-mapper rules (10-dm.rules or Debian's 55-dm.rules) when the device resumes.
func WaitForLink(devDir string, d Device, timeout time.Duration) error {
	path := NodePath(devDir, d.Name)
	want := unix.Mkdev(d.Major, d.Minor)
	deadline := time.Now().Add(timeout)
	for {
		var st unix.Stat_t
		err := unix.Stat(path, &st)
		if err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == want {
			return nil
		}
		if time.Now().After(deadline) {
			found := "nothing"
			if err == nil {
				found = fmt.Sprintf("mode %o, device %d:%d", st.Mode&unix.S_IFMT, unix.Major(st.Rdev), unix.Minor(st.Rdev))
			}
			return fmt.Errorf("udev did not link %s to %s (%s) within %s: found %s (are the device-mapper udev rules in the initrd?)",
				path, d.Name, d.ID(), timeout, found)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// NodePath is where MakeNode puts d's node.
func NodePath(devDir, name string) string { return filepath.Join(devDir, "mapper", name) }

func (c *Control) publish(d Device) error {
	if c.UdevTimeout > 0 {
		return WaitForLink(c.DevDir, d, c.UdevTimeout)
	}
	if c.DevDir != "" {
		if err := MakeNode(c.DevDir, d); err != nil {
			return err
		}
	}
	if c.UdevDir != "" {
		now := time.Duration(0)
		if c.Now != nil {
			now = c.Now()
		}
		if err := WriteUdevDB(c.UdevDir, d, now); err != nil {
			return err
		}
	}
	return nil
}

// unpublish removes what publish made for a removed device: the node only when it still
// has the device's number, so that a node made by someone else is left alone.
func (c *Control) unpublish(d Device) error {
	if c.UdevTimeout > 0 {
		return nil // udev removes its link on the removal's uevent
	}
	var errs []error
	if c.DevDir != "" && d.Name != "" {
		path := NodePath(c.DevDir, d.Name)
		var st unix.Stat_t
		if unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == unix.Mkdev(d.Major, d.Minor) {
			if err := os.Remove(path); err != nil {
				errs = append(errs, fmt.Errorf("removing %s: %w", path, err))
			}
		}
	}
	if c.UdevDir != "" {
		for _, p := range []string{filepath.Join(c.UdevDir, "data", deviceID(d)), filepath.Join(c.UdevDir, "tags", "systemd", deviceID(d))} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}
