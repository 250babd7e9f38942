package boot

import (
	"fmt"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/verity"
)

// Plan is what the config and the kernel command line decide together, resolved once before
// any step runs (a kernel parameter wins over the config key it shadows). The steps read the
// plan, not the command line; the config and the command line it comes from are measured.
type Plan struct {
	Mode Mode
	// RootVolume and UsrVolume are the dm-verity volumes roothash= and usrhash= name; nil
	// when there is none or systemd.verity= turned verity off (and verity.required allows).
	RootVolume, UsrVolume *verity.Volume
	// VerityWarnings are ignored values and options of the verity parameters, to be logged.
	VerityWarnings []string
	// RootSpec names the root when it is not a verity volume: root= or root.device.
	RootSpec string
	// RootFSType is rootfstype= or root.fstype; RootOptions root.options and rootflags=.
	RootFSType, RootOptions string
	// Init is init= or root.init; InitArgs the words after "--".
	Init     string
	InitArgs []string
	// Persistent is root.persistent: encrypt-on-first-boot.
	Persistent bool
}

// NewPlan resolves the plan of a boot in mode.
func NewPlan(mode Mode, cfg *config.Config, cl *cmdline.Cmdline) (*Plan, error) {
	vc, err := verity.ParseCmdline(cl)
	if err != nil {
		return nil, err
	}
	root, err := vc.RootVolume(cfg.Verity.Required)
	if err != nil {
		return nil, err
	}
	p := &Plan{Mode: mode, RootVolume: root, VerityWarnings: vc.Warnings,
		RootSpec: cfg.Root.Device, RootFSType: string(cfg.Root.FSType), Init: cfg.Root.Init,
		RootOptions: joinOptions(cfg.Root.Options, cl.Value("rootflags")), InitArgs: cl.InitArgs()}
	if vc.Usr != nil && vc.Enabled {
		p.UsrVolume = vc.Usr
	}
	if v, ok := cl.Get("root"); ok && v != "" {
		p.RootSpec = v
	}
	if v, ok := cl.Get("rootfstype"); ok && v != "" {
		p.RootFSType = v
	}
	if v, ok := cl.Get("init"); ok && v != "" {
		p.Init = v
	}
	if cfg.Root.Persistent == config.PersistentEncryptOnFirstBoot {
		switch {
		case mode == ModeSystemd:
			return nil, fmt.Errorf("root.persistent: %s is made in the initrd (cvmboot as PID 1 or its systemd-initrd units), not in %s mode", cfg.Root.Persistent, mode)
		case p.RootVolume == nil:
			return nil, fmt.Errorf("root.persistent: %s copies the verified root, but the command line has no roothash=", cfg.Root.Persistent)
		case p.UsrVolume != nil:
			return nil, fmt.Errorf("root.persistent: %s with usrhash= is not supported (the copy would leave /usr unverified)", cfg.Root.Persistent)
		}
		p.Persistent = true
	}
	return p, nil
}

// verityVolumes are the volumes the verity step activates, root first.
func (p *Plan) verityVolumes() []*verity.Volume {
	var vols []*verity.Volume
	for _, v := range []*verity.Volume{p.RootVolume, p.UsrVolume} {
		if v != nil {
			vols = append(vols, v)
		}
	}
	return vols
}
