package evidence

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/initdata"
)

// fromEvents fills the claims from the event log. Where an event type occurs more than once the
// last one counts, as each stage's final decision is measured last; a second verity event for
// the same target is an error because two root hashes cannot both have been enforced. Records
// after the boot's end were measured by the booted system, where root may measure anything:
// they are listed as runtime events and change no boot claim. The end is the first
// cvmboot.handoff record, which cvmboot measures into PCR 15 (RTMR 3) with every decision, so
// that the registers, not the log file's order, place each record before or after it; a log
// without one (cvmboot before it) ends at leave-initrd, which on a TPM lies in another PCR.
// Phase records end at leave-initrd: they are all in PCR 11, whose order the register binds.
func (c *Claims) fromEvents(recs []eventlog.Record) error {
	verityTargets := map[string]int{}
	handoff := slices.ContainsFunc(recs, func(r eventlog.Record) bool { return r.Type() == eventlog.TypeHandoff })
	left, leftPhases := false, false
	for i := range recs {
		r := &recs[i]
		typ, data := r.Type(), r.Data()
		c.rtmrRecords = c.rtmrRecords || r.RTMR != nil
		if left || (leftPhases && typ == eventlog.TypePhase) {
			if typ == eventlog.TypeInitdata {
				// The boot binds initdata (PCR 8 from zero); one recorded later would let the
				// booted system choose the binding Trustee checks.
				return fail("init_data", "record %d (%s) was measured after the boot's end: initdata bound by the booted system", r.RecNum, typ)
			}
			c.RuntimeEvents = append(c.RuntimeEvents, EventRef{RecNum: r.RecNum, Type: typ, Data: string(data)})
			continue
		}
		c.Events = append(c.Events, EventRef{RecNum: r.RecNum, Type: typ, Data: string(data)})
		bad := func(err error) error {
			return fail("event-log", "record %d (%s): %v", r.RecNum, typ, err)
		}
		switch typ {
		case eventlog.TypePhase:
			var p eventlog.PhaseData
			if err := json.Unmarshal(data, &p); err != nil {
				return bad(err)
			}
			c.Phases = append(c.Phases, p.Phase)
			leftPhases = leftPhases || p.Phase == eventlog.PhaseLeaveInitrd
			if p.Phase == eventlog.PhaseLeaveInitrd && !handoff {
				left, c.unanchoredEnd = true, true
			}
		case eventlog.TypeHandoff:
			left = true
		case eventlog.TypeVerity:
			var v Verity
			if err := json.Unmarshal(data, &v); err != nil {
				return bad(err)
			}
			if prev, dup := verityTargets[v.Target]; dup {
				return bad(fmt.Errorf("a second verity event for target %q (the first is record %d)", v.Target, prev))
			}
			verityTargets[v.Target] = r.RecNum
			v.RootHash = strings.ToLower(v.RootHash)
			if _, err := hex.DecodeString(v.RootHash); err != nil || v.RootHash == "" {
				return bad(fmt.Errorf("roothash %q is not hex", v.RootHash))
			}
			c.Verity = append(c.Verity, v)
			if v.Target == "root" {
				c.RootHash = v.RootHash
				c.RootHashEnforced = v.OnCorruption == "panic" || v.OnCorruption == "restart"
			}
		case eventlog.TypeStorage:
			var s Storage
			if err := json.Unmarshal(data, &s); err != nil {
				return bad(err)
			}
			c.Storage = &s
		case eventlog.TypeOverlay:
			var o Overlay
			if err := json.Unmarshal(data, &o); err != nil {
				return bad(err)
			}
			c.Overlay = &o
		case eventlog.TypeConfig:
			var cf Config
			if err := json.Unmarshal(data, &cf); err != nil {
				return bad(err)
			}
			c.Config = &cf
		case eventlog.TypeInitdata:
			if c.InitData != nil {
				return bad(errors.New("a second initdata record: the boot takes one document"))
			}
			var d InitData
			if err := json.Unmarshal(data, &d); err != nil {
				return bad(err)
			}
			c.InitData = &d
		case eventlog.TypeCmdline:
			var cl Cmdline
			if err := json.Unmarshal(data, &cl); err != nil {
				return bad(err)
			}
			c.Cmdline = &cl
		}
	}
	return nil
}

// checkInitData compares the initdata the boot measured with the expected one, and with what
// each TEE report carries: a document the host did not bind into HOST_DATA / MRCONFIGID fails,
// as cvmboot itself refuses it. PCR 8 is checked by the replay (the record extends it).
func (c *Claims) checkInitData(opts *Options) error {
	d := c.InitData
	if d != nil && d.Found {
		digest, _ := hex.DecodeString(d.Digest) // checked by ParseLog
		for _, pc := range c.Platforms {
			var want []byte
			var field string
			switch pc.Platform {
			case PlatformSNP:
				want, field = initdata.HostData(digest), "HOST_DATA"
			case PlatformTDX:
				want, field = initdata.MRConfigID(digest), "MRCONFIGID"
			case PlatformTPM:
				if err := checkPCR8(pc, d, digest); err != nil {
					return err
				}
				continue
			default:
				continue
			}
			if got, _ := hex.DecodeString(pc.HostConfig); !bytes.Equal(got, want) {
				return fail("init_data", "%s: the %s is %s, but the boot took initdata with digest %s (%s): expected %x", pc.Platform, field, pc.HostConfig, d.Digest, d.Source, want)
			}
		}
	}
	ref := opts.ExpectInitData
	if ref == nil && opts.Reference != nil {
		ref = opts.Reference.InitData
	}
	if ref == nil {
		return nil
	}
	switch {
	case d == nil:
		return fail("init_data", "the reference values name initdata %s (digest %s), but the boot measured no initdata record (initdata.source none?)", ref.File, ref.Digest)
	case !d.Found:
		return fail("init_data", "the reference values name initdata %s (digest %s), but the boot found none (%s)", ref.File, ref.Digest, d.Source)
	case d.Algorithm != ref.Algorithm || d.Digest != ref.Digest:
		return fail("init_data", "the boot took initdata %s with %s digest %s, expected %s digest %s (%s): another pod configuration", d.Source, d.Algorithm, d.Digest, ref.Algorithm, ref.Digest, ref.File)
	}
	c.InitDataExpected = true
	return nil
}

// checkPCR8 requires a quote of a boot that bound initdata to PCR 8 to show exactly Trustee's
// value, SHA-256(32 zero bytes ‖ digest), whether or not a firmware log was replayed: any
// other extend of PCR 8 breaks the binding.
func checkPCR8(pc PlatformClaims, d *InitData, digest []byte) error {
	if !slices.Contains(d.Bound, eventlog.BoundPCR8) {
		return nil
	}
	want, err := initdata.PCR8(digest)
	if err != nil {
		return fail("init_data", "tpm: %v", err)
	}
	reg := eventlog.PCR(eventlog.PCRInitdata, crypto.SHA256).String()
	for _, r := range pc.Registers {
		if r.Register == reg {
			if r.Value != hex.EncodeToString(want) {
				return fail("init_data", "tpm: PCR 8 is %s in the quote, but the boot bound initdata %s there: expected SHA-256(32 zero bytes ‖ digest) = %x (something else extended PCR 8)", r.Value, d.Digest, want)
			}
			return nil
		}
	}
	return fail("init_data", "tpm: the boot bound initdata %s to PCR 8, which the quote does not cover", d.Digest)
}
