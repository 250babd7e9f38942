package mount

import (
	"fmt"
	"os"
	"path/filepath"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// OverlaySpec describes the writable layer put over a read-only root.
type OverlaySpec struct {
	// Target is the read-only root's mount point; the overlay is mounted over it, with the
	// root itself as the lower layer (what systemd.volatile=overlay does).
	Target string
	// StateDir holds the upper and work directories. It should be below /run so it moves
	// into the new root with /run and stays inspectable there.
	StateDir string
	// TmpfsSize is tmpfs's size= value for StateDir ("50%" or bytes). Empty: StateDir is
	// not a new tmpfs but an existing writable directory (the encrypted storage).
	TmpfsSize string
}

// Overlay mounts an overlay with a tmpfs (or an existing directory) as the upper layer
// over the read-only root at spec.Target.
func Overlay(log *zap.Logger, spec OverlaySpec) error {
	if log == nil {
		log = zap.NewNop()
	}
	if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
		return fmt.Errorf("overlay: creating %s: %w", spec.StateDir, err)
	}
	if spec.TmpfsSize != "" {
		data := "mode=0755,size=" + spec.TmpfsSize
		if err := unix.Mount("tmpfs", spec.StateDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
			return &Error{Op: "mount", Source: "tmpfs", Target: spec.StateDir, FSType: "tmpfs", Options: data, Err: err}
		}
		log.Info("overlay upper tmpfs mounted", zap.String("target", spec.StateDir), zap.String("size", spec.TmpfsSize))
	}
	upper, work := filepath.Join(spec.StateDir, "upper"), filepath.Join(spec.StateDir, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("overlay: creating %s: %w", d, err)
		}
	}
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", spec.Target, upper, work)
	if err := unix.Mount("overlay", spec.Target, "overlay", 0, data); err != nil {
		return &Error{Op: "mount", Source: "overlay", Target: spec.Target, FSType: "overlay", Options: data, Err: err}
	}
	log.Info("overlay mounted over the read-only root", zap.String("target", spec.Target), zap.String("options", data))
	return nil
}
