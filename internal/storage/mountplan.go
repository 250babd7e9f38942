package storage

import (
	"path/filepath"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// pendingMount is a mount inside TargetRoot not made yet.
type pendingMount struct {
	target string
	bind   bool
}

// inRun reports whether p is under /run, which moves into the real root at the switch, so
// mounts there can be made before the root is assembled.
func (s *Stage) inRun(p string) bool {
	return p == "/run" || strings.HasPrefix(p, "/run/") || s.TargetRoot == ""
}

// resolve places a mount point: under /run as it is, elsewhere inside TargetRoot.
func (s *Stage) resolve(p string) string {
	if s.inRun(p) {
		return p
	}
	return filepath.Join(s.TargetRoot, p)
}

// mountRun mounts the volume at the mount point and binds it to the bind targets, all
// nodev,nosuid, as far as they are under /run; the others are recorded for MountIntoRoot.
// A mount point inside the root defers everything (the binds come from it). On failure
// whatever it mounted is unmounted again.
func (s *Stage) mountRun(res *Result) error {
	cfg := s.Config
	res.Mountpoint = s.resolve(cfg.Mountpoint)
	if !s.inRun(cfg.Mountpoint) {
		res.rootMounts = append(res.rootMounts, pendingMount{target: res.Mountpoint})
		for _, b := range cfg.Binds {
			res.rootMounts = append(res.rootMounts, pendingMount{target: s.resolve(b), bind: true})
		}
		return nil
	}
	if err := s.mountOne(res, pendingMount{target: res.Mountpoint}); err != nil {
		return err
	}
	for _, b := range cfg.Binds {
		pm := pendingMount{target: s.resolve(b), bind: true}
		if !s.inRun(b) {
			res.rootMounts = append(res.rootMounts, pm)
			continue
		}
		if err := s.mountOne(res, pm); err != nil {
			s.unmountAll(res.Mounted)
			res.Mounted = nil
			return err
		}
	}
	return nil
}

// MountIntoRoot makes the mounts inside TargetRoot that Setup left, once the root (with
// its overlay) is in place. On failure it unmounts what it mounted; Abort undoes the rest.
func (s *Stage) MountIntoRoot(res *Result) error {
	if res == nil {
		return nil
	}
	done := len(res.Mounted)
	for _, pm := range res.rootMounts {
		if err := s.mountOne(res, pm); err != nil {
			s.unmountAll(res.Mounted[done:])
			res.Mounted = res.Mounted[:done]
			return err
		}
	}
	res.rootMounts = nil
	return nil
}

// mountOne mounts the volume (or binds the mount point) at pm.target, nodev,nosuid.
func (s *Stage) mountOne(res *Result, pm pendingMount) error {
	if err := s.Mounter.MkdirAll(pm.target); err != nil {
		return err
	}
	if !pm.bind {
		data := res.mountData
		if res.fstype == "tmpfs" {
			data = "mode=0755"
		}
		if err := s.Mounter.Mount(res.source, pm.target, res.fstype, mountFlags, data); err != nil {
			return err
		}
		res.Mounted = append(res.Mounted, pm.target)
		return nil
	}
	if err := s.Mounter.Mount(res.Mountpoint, pm.target, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	res.Mounted = append(res.Mounted, pm.target)
	// A bind ignores nodev,nosuid; a remount applies them.
	return s.Mounter.Mount("", pm.target, "", unix.MS_REMOUNT|unix.MS_BIND|mountFlags, "")
}

// unmountAll unmounts targets, last first.
func (s *Stage) unmountAll(targets []string) {
	for i := len(targets) - 1; i >= 0; i-- {
		if err := s.Mounter.Unmount(targets[i]); err != nil {
			s.log().Warn("could not unmount after a failed storage mount", zap.String("target", targets[i]), zap.Error(err))
		}
	}
}

// tmpfsFallback mounts a tmpfs where the storage would be, for
// storage.on_no_space: tmpfs. Container storage then lives in RAM.
func (s *Stage) tmpfsFallback(cause error) (*Result, error) {
	res := &Result{source: "tmpfs", fstype: "tmpfs", Integrity: "none", Filesystem: "tmpfs"}
	if err := s.mountRun(res); err != nil {
		return nil, err
	}
	s.log().Warn("no room for encrypted storage on the boot disk: container storage is a tmpfs in RAM (storage.on_no_space is tmpfs)",
		zap.String("mountpoint", res.Mountpoint), zap.Error(cause))
	res.Facts = map[string]string{"backing": "tmpfs", "mountpoint": res.Mountpoint, "reason": cause.Error()}
	if len(s.Config.Binds) > 0 {
		res.Facts["binds"] = strings.Join(s.Config.Binds, ",")
	}
	return res, nil
}
