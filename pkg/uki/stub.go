package uki

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Stub is the systemd-stub a UKI was built from, as its .sdmagic section names it.
type Stub struct {
	Magic   string // the section text, "#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####"
	Version string // "252.39-1~deb12u2"
	Major   int    // 252
}

// sdmagicMax bounds the .sdmagic text read (systemd's is about 50 bytes).
const sdmagicMax = 256

var sdmagicPattern = regexp.MustCompile(`^#### LoaderInfo: systemd-stub (([0-9]{1,6})[^ ]*) ####$`)

// Stub reads the stub's version from the .sdmagic section.
func (im *Image) Stub() (*Stub, error) {
	secs := im.Lookup(".sdmagic")
	switch {
	case len(secs) == 0:
		return nil, formatErr("no .sdmagic section: not built on systemd-stub (pass the stub version explicitly if it is)")
	case len(secs) > 1:
		return nil, formatErr("%d .sdmagic sections: cannot tell which stub runs", len(secs))
	}
	b, err := io.ReadAll(io.LimitReader(im.SectionReader(secs[0]), sdmagicMax))
	if err != nil {
		return nil, fmt.Errorf("read .sdmagic: %w", err)
	}
	text := string(bytes.TrimRight(b, "\x00"))
	m := sdmagicPattern.FindStringSubmatch(text)
	if m == nil {
		return nil, formatErr(".sdmagic is %q, expected \"#### LoaderInfo: systemd-stub VERSION ####\"", text)
	}
	major, _ := strconv.Atoi(m[2])
	return &Stub{Magic: text, Version: m[1], Major: major}, nil
}

// Section names systemd-stub gives a meaning to.
const (
	SectionLinux   = ".linux"
	SectionOSRel   = ".osrel"
	SectionCmdline = ".cmdline"
	SectionInitrd  = ".initrd"
	SectionUcode   = ".ucode"
	SectionSplash  = ".splash"
	SectionDTB     = ".dtb"
	SectionUname   = ".uname"
	SectionSBAT    = ".sbat"
	SectionPCRSig  = ".pcrsig"
	SectionPCRPKey = ".pcrpkey"
	SectionProfile = ".profile"
	SectionDTBAuto = ".dtbauto"
	SectionHWIDs   = ".hwids"
	SectionEFIFW   = ".efifw"
)

// Supported stub versions.
const (
	MinStubMajor = 252 // the first stub that measures its sections into PCR 11
	MaxStubMajor = 257 // the newest section table this package knows
)

// StubSections returns the sections systemd-stub of major version major measures into PCR 11,
// in its order (the UnifiedSection enumeration, not the file's order), .pcrsig excluded: the
// stub never measures it. Sources, systemd's src/fundamental/tpm-pcr.h and later uki.h/uki.c:
//
//	252, 253  .linux .osrel .cmdline .initrd .splash .dtb .pcrpkey
//	          (253 added a .uname section to ukify but did not measure it: ukify 253 marks it
//	          measure=False)
//	254, 255  .uname and .sbat after .dtb
//	256       .ucode after .initrd
//	257       .profile .dtbauto .hwids after .pcrpkey
//
// Checked against the real tools: Debian's systemd-measure 252, 254 and 257 list exactly these
// sections for their versions, and their calculate output equals this package's for UKIs built
// on Debian's stubs 252, 254 and 257 (interop_test.go; 254 and 257 when CVMBOOT_TEST_STUBS and
// CVMBOOT_TEST_SYSTEMD_MEASURE point at them). systemd-measure 257 measures its --hwids file
// under the name .dtbauto (fixed by systemd PR #35765); the stub measures .hwids as .hwids, as
// here. 253, 255 and 256 come from the source only.
func StubSections(major int) ([]string, error) {
	if major < MinStubMajor {
		return nil, fmt.Errorf("systemd-stub %d does not measure the UKI's sections into PCR 11 (that began with 252)", major)
	}
	if major > MaxStubMajor {
		return nil, fmt.Errorf("systemd-stub %d is newer than the section tables this tool knows (%d-%d): its PCR 11 cannot be predicted here",
			major, MinStubMajor, MaxStubMajor)
	}
	s := []string{SectionLinux, SectionOSRel, SectionCmdline, SectionInitrd}
	if major >= 256 {
		s = append(s, SectionUcode)
	}
	s = append(s, SectionSplash, SectionDTB)
	if major >= 254 {
		s = append(s, SectionUname, SectionSBAT)
	}
	s = append(s, SectionPCRPKey)
	if major >= 257 {
		s = append(s, SectionProfile, SectionDTBAuto, SectionHWIDs)
	}
	return s, nil
}

// knownSections are every name any stub version interprets, for the ambiguity checks.
var knownSections = []string{SectionLinux, SectionOSRel, SectionCmdline, SectionInitrd, SectionUcode, SectionSplash,
	SectionDTB, SectionUname, SectionSBAT, SectionPCRSig, SectionPCRPKey, SectionProfile, SectionDTBAuto, SectionHWIDs, SectionEFIFW}

// Event is one PCR 11 measurement pair of systemd-stub: the section's name, then its data.
type Event struct {
	Section    string   // ".linux"
	Size       uint32   // bytes measured: the section's VirtualSize
	NameDigest [32]byte // SHA-256 of the name with its terminating NUL (".linux\x00")
	DataDigest [32]byte // SHA-256 of the section as loaded (VirtualSize bytes)
	// NameDigest384 and DataDigest384 are the SHA-384 digests of the same bytes: what TDX
	// firmware extends into RTMR 2 when a stub from CCMinStubMajor on measures the section
	// through EFI_CC_MEASUREMENT_PROTOCOL (see StubMeasuresCC).
	NameDigest384 [48]byte
	DataDigest384 [48]byte
}

// CCMinStubMajor is the first systemd-stub that measures into EFI_CC_MEASUREMENT_PROTOCOL
// (systemd commit 7ff0e0a5e0, "efi: Add EFI CC measurement protocol to stub", first in v256).
const CCMinStubMajor = 256

// StubMeasuresCC tells whether systemd-stub of major version major measures its PCR 11
// section events through EFI_CC_MEASUREMENT_PROTOCOL too. From 256 on, tpm_log_event
// (tpm_log_ipl_event in 257) in src/boot/efi/measure.c (src/boot/measure.c in 257) measures
// every EV_IPL event first through the CC protocol, into the measurement register
// MapPcrToMrIndex gives for the PCR, then through TCG2: the same buffer, so the same bytes,
// hashed by the firmware with its CC algorithm (SHA-384 on TDX). EDK2's TDX firmware maps
// PCR 8-15 to CC MR 3, TDX RTMR 2 (OvmfPkg/IntelTdx/TdxMeasurementLib/TdxMeasurementCommon.c).
// Stubs 252-255 have no CC code: on a TDX guest without a vTPM they measure nothing.
func StubMeasuresCC(major int) bool { return major >= CCMinStubMajor }

// StubEvents returns the events systemd-stub of major version major extends into PCR 11 (the
// SHA-256 bank) when it runs this UKI: for each section of StubSections present with a
// non-zero VirtualSize, SHA-256 of its name and NUL, then SHA-256 of its VirtualSize bytes as
// loaded (file data, zeros past SizeOfRawData). systemd-measure hashes the same bytes when
// given the section contents as files. Each event carries the SHA-384 digests of the same
// bytes too, for TDX RTMR 2 (StubMeasuresCC).
//
// Refused, because the stub's result would depend on more than the file: a measured section
// name present twice (older stubs use the last one, newer ones the first); a section whose name
// extends a known one (".linuxX": older stubs compare only the known name's length, memcmp with
// strlen in src/boot/efi/pe.c);
// from 257 on, .profile (multi-profile UKIs: the measured set depends on the profile the boot
// selects) and .dtbauto (chosen by the hardware's IDs).
func (im *Image) StubEvents(major int) ([]Event, error) {
	order, err := StubSections(major)
	if err != nil {
		return nil, err
	}
	for i := range im.Sections {
		n := im.Sections[i].Name
		for _, k := range knownSections {
			if n != k && strings.HasPrefix(n, k) {
				return nil, formatErr("section %q starts with the UKI section name %q: older stubs would take it for %s", n, k, k)
			}
		}
	}
	for _, name := range append(slices.Clone(order), SectionPCRSig) {
		if c := len(im.Lookup(name)); c > 1 {
			return nil, formatErr("%d sections named %s: stubs disagree on which one they measure", c, name)
		}
	}
	if major >= 257 {
		for _, name := range []string{SectionProfile, SectionDTBAuto} {
			if len(im.Lookup(name)) > 0 {
				return nil, formatErr("the UKI has a %s section: systemd-stub %d measures sections chosen at boot (by profile or hardware), which this tool does not predict", name, major)
			}
		}
	}
	var events []Event
	for _, name := range order {
		secs := im.Lookup(name)
		if len(secs) == 0 || secs[0].VirtualSize == 0 {
			continue
		}
		h, h384 := sha256.New(), sha512.New384()
		if _, err := io.Copy(io.MultiWriter(h, h384), im.SectionReader(secs[0])); err != nil {
			return nil, fmt.Errorf("read section %s: %w", name, err)
		}
		nameNUL := append([]byte(name), 0)
		ev := Event{Section: name, Size: secs[0].VirtualSize, NameDigest: sha256.Sum256(nameNUL), NameDigest384: sha512.Sum384(nameNUL)}
		h.Sum(ev.DataDigest[:0])
		h384.Sum(ev.DataDigest384[:0])
		events = append(events, ev)
	}
	return events, nil
}

// Extend returns the PCR value after extending pcr with digest: SHA-256(pcr ‖ digest).
func Extend(pcr, digest [32]byte) [32]byte {
	return sha256.Sum256(append(pcr[:], digest[:]...))
}

// Replay returns PCR 11 (SHA-256 bank) after the events, starting from zero, as the TPM holds
// it once the stub has run (nothing else extends PCR 11 before it).
func Replay(events []Event) [32]byte {
	var pcr [32]byte
	for _, e := range events {
		pcr = Extend(Extend(pcr, e.NameDigest), e.DataDigest)
	}
	return pcr
}

// Extend384 returns the register value after extending mr with digest: SHA-384(mr ‖ digest),
// the extend of TDX RTMRs (TDG.MR.RTMR.EXTEND) and of a TPM's SHA-384 bank.
func Extend384(mr, digest [48]byte) [48]byte {
	return sha512.Sum384(append(mr[:], digest[:]...))
}

// Replay384 returns a 48-byte register after the events' SHA-384 digests (name, then data),
// starting from zero: TDX RTMR 2 once a stub that StubMeasuresCC has run, when nothing was
// measured into RTMR 2 before it (TDX firmware maps only PCR 8-15 there, and EDK2's TDVF logs
// no event for those PCRs; a shim or boot loader started before the UKI may).
func Replay384(events []Event) [48]byte {
	var mr [48]byte
	for _, e := range events {
		mr = Extend384(Extend384(mr, e.NameDigest384), e.DataDigest384)
	}
	return mr
}
