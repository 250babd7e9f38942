package boot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cvmboot/cvmboot/internal/stage"
)

// Mode is how cvmboot runs the boot; the report's mode names it.
type Mode string

const (
	// ModeInitramfs: cvmboot is PID 1 of its own initramfs and runs every step itself.
	ModeInitramfs Mode = "initramfs"
	// ModeSystemdInitrd: systemd runs the initrd, cvmboot's units run the steps
	// (`cvmboot run STEP…`), systemd mounts the root and switches to it.
	ModeSystemdInitrd Mode = "systemd-initrd"
	// ModeSystemd: the booted system of an image that keeps its own initrd
	// (cvmboot-scratch-storage.service).
	ModeSystemd Mode = "systemd"
)

// Units tells whether the steps run from systemd units, one process per unit.
func (m Mode) Units() bool { return m != ModeInitramfs }

// Initrd tells whether the steps run before the switch to the real root.
func (m Mode) Initrd() bool { return m != ModeSystemd }

// Step names, in boot order.
const (
	StageEarlyMounts = "early-mounts"
	StageModules     = "modules"
	StageAttest      = "attest"
	StageInitdata    = "initdata"
	StageVerity      = "verity"
	StagePersist     = "persistent-root"
	StageRoot        = "root"
	StageStorage     = "storage"
	StageOverlay     = "overlay"
	StageUsr         = "usr"
	StageBinds       = "binds"
	StageEvidence    = "evidence"
	StageHandoff     = "handoff"
)

// Step is one named step of the boot.
type Step struct {
	Name string
	// Modes are the modes whose boot has the step.
	Modes []Mode
	// Unit is the systemd unit that runs the step in the unit modes
	// (systemd/UNIT: ExecStart=cvmboot run … NAME …); "" in PID 1 mode only.
	Unit string
	// Does says what the step does, for `cvmboot run --help` and ARCHITECTURE.md.
	Does string
	run  func(*Boot, context.Context) (stage.Facts, error)
}

var (
	allModes    = []Mode{ModeInitramfs, ModeSystemdInitrd, ModeSystemd}
	initrdModes = []Mode{ModeInitramfs, ModeSystemdInitrd}
	pid1Mode    = []Mode{ModeInitramfs}
)

// Sequence is the boot: every step in the order it runs, in every mode. It is also the order
// of the measured events (phase, config, cmdline, verity, storage, overlay, phase; see
// pkg/eventlog), so a verifier knows one order. The modes differ in which steps they have
// and, inside a step, in what systemd already did (it mounts the root in a systemd initrd).
func Sequence() []Step {
	return []Step{
		{Name: StageEarlyMounts, Modes: pid1Mode, Does: "mount /sys, /run, securityfs, configfs, efivarfs, /dev/pts", run: (*Boot).earlyMounts},
		{Name: StageModules, Modes: allModes, Unit: "cvmboot-attest.service", Does: "load the kernel modules the image packed and the config names", run: (*Boot).modules},
		{Name: StageAttest, Modes: allModes, Unit: "cvmboot-attest.service", Does: "find the TEE/TPM, open the event log; measure phase, config, command line", run: (*Boot).attest},
		{Name: StageInitdata, Modes: allModes, Unit: "cvmboot-attest.service", Does: "take Confidential Containers' initdata (initdata.source), check it against SEV-SNP HOST_DATA / TDX MRCONFIGID, measure it (vTPM: PCR 8 once), write its files", run: (*Boot).initdata},
		{Name: StageVerity, Modes: initrdModes, Unit: "cvmboot-verity.service", Does: "activate the roothash=/usrhash= dm-verity volumes, refusing any mismatch; measure them", run: (*Boot).verity},
		{Name: StagePersist, Modes: initrdModes, Unit: "cvmboot-persistent-root.service", Does: "root.persistent: make the encrypted root from the verified one (first boot) or unlock it with the TPM; measure it", run: (*Boot).persist},
		{Name: StageRoot, Modes: allModes, Unit: "cvmboot-root.service", Does: "mount the root read-only at /sysroot (PID 1); check what systemd mounted (initrd); find the root's device", run: (*Boot).root},
		{Name: StageStorage, Modes: allModes, Unit: "cvmboot-root.service", Does: "encrypted storage on the root disk's free space, mounted under /run; measure it", run: (*Boot).storage},
		{Name: StageOverlay, Modes: initrdModes, Unit: "cvmboot-root.service", Does: "overlay a tmpfs (or the storage) over the read-only root; measure it", run: (*Boot).overlay},
		{Name: StageUsr, Modes: pid1Mode, Does: "mount the verified /usr (usrhash=) read-only over the assembled root, after the overlay that would hide it", run: (*Boot).usr},
		{Name: StageBinds, Modes: allModes, Unit: "cvmboot-root.service", Does: "the storage's mounts inside the root, which the overlay would have hidden", run: (*Boot).binds},
		{Name: StageEvidence, Modes: initrdModes, Unit: "cvmboot-evidence.service", Does: "measure leave-initrd, write the evidence bound to the event log", run: (*Boot).evidence},
		{Name: StageHandoff, Modes: pid1Mode, Does: "switch to the root and execute its init", run: (*Boot).handoff},
	}
}

// has tells whether the step is part of mode's boot.
func (s Step) has(m Mode) bool { return slices.Contains(s.Modes, m) }

// StepsOf returns mode's steps, in order.
func StepsOf(m Mode) []Step {
	var out []Step
	for _, s := range Sequence() {
		if s.has(m) {
			out = append(out, s)
		}
	}
	return out
}

// UnitStepNames lists the steps `cvmboot run` accepts, for its help.
func UnitStepNames() string {
	var names []string
	for _, s := range Sequence() {
		if s.Unit != "" {
			names = append(names, s.Name)
		}
	}
	return strings.Join(names, ", ")
}

// selectSteps returns the named steps of mode's boot in sequence order; names must be in
// sequence order too, as the units run them. nil names are all of mode's steps.
func selectSteps(m Mode, names []string) ([]Step, error) {
	steps := StepsOf(m)
	if names == nil {
		return steps, nil
	}
	var out []Step
	next := 0
	for _, n := range names {
		i := slices.IndexFunc(steps, func(s Step) bool { return s.Name == n })
		if i < 0 {
			if slices.ContainsFunc(Sequence(), func(s Step) bool { return s.Name == n }) {
				return nil, fmt.Errorf("step %q is not part of a boot in %s mode", n, m)
			}
			return nil, fmt.Errorf("unknown step %q (steps: %s)", n, UnitStepNames())
		}
		if i < next {
			return nil, fmt.Errorf("step %q comes before %q in the boot: name them in boot order", n, steps[next-1].Name)
		}
		out, next = append(out, steps[i]), i+1
	}
	return out, nil
}

// stages binds steps to b for the runner.
func (b *Boot) stages(steps []Step) []stage.Stage {
	out := make([]stage.Stage, len(steps))
	for i, s := range steps {
		run := s.run
		name := s.Name
		out[i] = stage.Stage{Name: s.Name, Required: true, Run: func(ctx context.Context) (stage.Facts, error) {
			facts, err := run(b, ctx)
			var skip *stage.SkipError
			if err == nil || errors.As(err, &skip) {
				b.dec.Done = append(b.dec.Done, name)
			}
			return facts, err
		}}
	}
	return out
}
