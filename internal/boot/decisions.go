package boot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// DecisionsPath carries what a unit's steps decided to the units after it (one process
// each): typed, and never read back out of the report, which is for operators.
const DecisionsPath = "/run/cvmboot/decisions.json"

// Decisions are what earlier steps of this boot decided.
type Decisions struct {
	// Plan is the plan the boot's first unit resolved; later units load it. PlanInputs are
	// the digests of the command line and the config it was resolved from: a later unit
	// whose own differ refuses the decisions.
	Plan       *Plan  `json:"plan,omitempty"`
	PlanInputs string `json:"plan_inputs,omitempty"`
	// Done are the steps of this boot that ran, in order: the evidence step refuses to end
	// a boot that skipped one, and the outcome is ok only when all of the mode's ran.
	Done []string `json:"done,omitempty"`
	// Attested: the attest step ran; Measuring: it opened the event log on the platform's
	// registers, so later steps measure their decisions too.
	Attested  bool `json:"attested"`
	Measuring bool `json:"measuring"`
	// Verity are the volumes the verity step activated, root first.
	Verity []VerityVolume `json:"verity,omitempty"`
	// Persistent is the encrypted root the persistent-root step activated (root.persistent),
	// which sysroot.mount must have mounted.
	Persistent *PersistentDecision `json:"persistent,omitempty"`
}

// PersistentDecision is the activated persistent root.
type PersistentDecision struct {
	Device    string `json:"device"` // /dev/mapper/cvmboot-root
	LUKSUUID  string `json:"luks_uuid"`
	Partition string `json:"partition"` // the LUKS2 partition, /dev/vda4
	PartUUID  string `json:"partuuid"`
	KeyDigest string `json:"key_digest"` // persist.KeyDigest of the unlocked header
}

// VerityVolume is an activated dm-verity volume.
type VerityVolume struct {
	Name          string `json:"name"`   // root or usr
	Device        string `json:"device"` // /dev/mapper/NAME
	RootHash      string `json:"root_hash"`
	HashAlgorithm string `json:"hash_algorithm"`
	OnCorruption  string `json:"on_corruption"`
}

// volume returns the activated volume called name, or nil.
func (d *Decisions) volume(name string) *VerityVolume {
	for i := range d.Verity {
		if d.Verity[i].Name == name {
			return &d.Verity[i]
		}
	}
	return nil
}

// readDecisions reads the decisions of the units before this one; none yet is no error.
func readDecisions(path string) (*Decisions, error) {
	d := &Decisions{}
	if path == "" {
		return d, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return nil, fmt.Errorf("decisions of earlier units: %w", err)
	}
	if err := json.Unmarshal(b, d); err != nil {
		return nil, fmt.Errorf("decisions of earlier units %s: %w", path, err)
	}
	return d, nil
}

// write saves the decisions for the next unit, atomically (a unit that dies midway leaves
// the previous ones).
func (d *Decisions) write(path string) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// allDone tells whether every step of mode's boot ran: only then is the boot ok.
func (d *Decisions) allDone(m Mode) bool { return len(d.missing(m, "")) == 0 }

// missing returns the steps of mode's boot before step ("": all of them) that are not done.
func (d *Decisions) missing(m Mode, step string) []string {
	var out []string
	for _, s := range StepsOf(m) {
		if s.Name == step {
			break
		}
		if !slices.Contains(d.Done, s.Name) {
			out = append(out, s.Name)
		}
	}
	return out
}
