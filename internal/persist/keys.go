package persist

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/tpmseal"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// maintainKeys runs once the root is mounted, with the volume key still held. It retires
// cvmboot's tokens of an older generation than the one that opened the root whose recorded
// PCR values are not this boot's (the UKI they were sealed for is not the one booting: a
// newer UKI has booted with its own token), then carries out an enrollment request left on
// the root by `cvmboot enroll`. Both are header writes before the data offset. It returns
// what changed, for the caller to measure, or nil.
func (s *Stage) maintainKeys(target string, facts map[string]string) (*eventlog.PersistentRootKeys, error) {
	h := s.held
	tokens := map[int]*tpmseal.Token{} // by keyslot: cvmboot's tokens
	maxGen, older := 0, false
	for _, id := range sortedKeys(h.hdr.Metadata.Tokens) {
		tok, err := tpmseal.ParseToken(h.hdr.Metadata.Tokens[id].JSON)
		if err != nil || tok.PCRValues == nil {
			continue // not cvmboot's: never touched here
		}
		tokens[tok.Keyslot] = tok
		maxGen = max(maxGen, generation(tok))
		older = older || generation(tok) < h.generation
	}
	// Most boots have neither an older token nor a request: they leave the TPM alone.
	if _, err := os.Lstat(filepath.Join(target, RequestPath)); !older && errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	tpm, closeTPM, err := s.TPMs.Open()
	if err != nil {
		return nil, err
	}
	defer closeTPM()
	now, err := tpmseal.ReadPCRs(tpm, PolicyPCRs)
	if err != nil {
		return nil, err
	}
	ev := &eventlog.PersistentRootKeys{LUKSUUID: h.hdr.UUID}
	for _, slot := range sortedKeys(tokens) {
		tok := tokens[slot]
		if generation(tok) >= h.generation || samePCRs(tok.PCRValues, now) {
			continue
		}
		if err := s.removeKeyslot(slot); err != nil {
			return nil, fmt.Errorf("retiring keyslot %d (generation %d) of the persistent root %s: %w", slot, generation(tok), h.part.Path, err)
		}
		delete(tokens, slot)
		ev.Retired = append(ev.Retired, slot)
		s.log().Info("persistent root: keyslot of an older UKI removed, a newer one opened the root",
			zap.Int("keyslot", slot), zap.Int("generation", generation(tok)), zap.Int("opened_generation", h.generation))
	}
	if len(ev.Retired) > 0 {
		facts["retired_keyslots"] = joinInts(ev.Retired)
	}

	enrolled, err := s.enroll(tpm, target, tokens, maxGen, now, facts)
	if err != nil {
		return nil, err
	}
	ev.Enrolled = enrolled
	if ev.Enrolled == nil && len(ev.Retired) == 0 {
		return nil, nil
	}
	return ev, nil
}

// enroll carries out the request at target/RequestPath, if any: a fresh secret sealed to its
// values in a new keyslot of the next generation, then the request removed. A request that
// cannot be carried out (it does not parse, root did not write it, its PCR 2 or 12 is not
// this machine's, the seal or the header write fails) is renamed *.refused and reported, not
// fatal: a boot that stopped here would stop at every later boot too. A request already
// carried out (a token with the same values: the boot stopped before removing it) is
// removed and reported as Earlier, so that it is measured.
func (s *Stage) enroll(tpm tpmseal.TPM, target string, tokens map[int]*tpmseal.Token, maxGen int, now [][]byte, facts map[string]string) (*eventlog.EnrolledKeyslot, error) {
	path := filepath.Join(target, RequestPath)
	raw, err := readRootsFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	setAside := func(err error) error { return s.setAsideRequest(path, err, facts) }
	if err != nil {
		return nil, setAside(err)
	}
	req, values, err := ParseRequest(raw)
	if err != nil {
		return nil, setAside(err)
	}
	for i, p := range PolicyPCRs {
		// What stays from UKI to UKI: drivers (2) and what the stub takes from outside
		// the UKI (12). A request asking otherwise is not this machine's.
		if (p == 2 || p == 12) && !bytes.Equal(values[i], now[i]) {
			return nil, setAside(fmt.Errorf("the request seals PCR %d to %x, this machine's is %x", p, values[i], now[i]))
		}
	}
	for slot, tok := range tokens {
		if samePCRs(tok.PCRValues, values) {
			// A boot stopped between the header write and the request's removal: its
			// measurement may never have been made. Measured here.
			facts["enrolled_keyslot"] = strconv.Itoa(slot) + " (before)"
			if err := removeSynced(path); err != nil {
				return nil, err
			}
			return &eventlog.EnrolledKeyslot{Keyslot: slot, Generation: generation(tok), UKISHA256: req.UKISHA256, PCRValues: req.Values, Earlier: true}, nil
		}
	}
	h := s.held
	slot, err := h.hdr.FreeKeyslot()
	if err != nil {
		return nil, err
	}
	gen := maxGen + 1
	if err := s.addSealedKeyslot(tpm, h.part, h.hdr, h.key, slot, values, gen); err != nil {
		return nil, setAside(fmt.Errorf("enrolling UKI %s in keyslot %d of the persistent root %s: %w", req.UKISHA256, slot, h.part.Path, err))
	}
	if err := removeSynced(path); err != nil {
		return nil, err
	}
	facts["enrolled_keyslot"], facts["enrolled_uki_sha256"] = strconv.Itoa(slot), req.UKISHA256
	s.log().Info("persistent root: a secret sealed for another UKI, from the enrollment request",
		zap.Int("keyslot", slot), zap.Int("generation", gen), zap.String("uki_sha256", req.UKISHA256), zap.Strings("pcr_values", req.Values))
	return &eventlog.EnrolledKeyslot{Keyslot: slot, Generation: gen, UKISHA256: req.UKISHA256, PCRValues: req.Values}, nil
}

// setAsideRequest renames the request at path to *.refused for why, which facts and the log
// record: a request that cannot be carried out is reported, not fatal (a boot that stopped
// here would stop at every later boot too).
func (s *Stage) setAsideRequest(path string, why error, facts map[string]string) error {
	s.log().Warn("enrollment request not carried out: renamed", zap.String("path", path+".refused"), zap.Error(why))
	facts["enroll_refused"] = why.Error()
	return os.Rename(path, path+".refused")
}

// readRootsFile reads a request only root could have written: a regular file, owned (as its
// directory) by this process's user (root, in the initramfs) and writable by no one else.
func readRootsFile(path string) ([]byte, error) {
	for _, p := range []string{filepath.Dir(path), path} {
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		switch {
		case p == path && !fi.Mode().IsRegular():
			return nil, fmt.Errorf("%s is not a regular file", p)
		case !ok || int(st.Uid) != os.Geteuid():
			return nil, fmt.Errorf("%s is not owned by uid %d", p, os.Geteuid())
		case fi.Mode().Perm()&0o022 != 0:
			return nil, fmt.Errorf("%s is writable by group or others (%v)", p, fi.Mode().Perm())
		}
	}
	return os.ReadFile(path)
}

// removeKeyslot removes a keyslot and its token while dm-integrity holds the partition.
func (s *Stage) removeKeyslot(slot int) error {
	dev, err := s.openShared(s.held.part.Path)
	if err != nil {
		return err
	}
	err = s.held.hdr.RemoveKeyslot(dev, slot)
	if cerr := dev.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeSynced removes a file and flushes its directory, so that a request is not carried
// out twice.
func removeSynced(path string) error {
	if err := os.Remove(path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func samePCRs(a, b [][]byte) bool { return slices.EqualFunc(a, b, bytes.Equal) }

// generation is a cvmboot token's generation; tokens written before the field are the
// conversion's, 1.
func generation(t *tpmseal.Token) int { return max(t.Generation, 1) }

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
