package evidence

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

func digestOf(s string) []byte { d := sha256.Sum256([]byte(s)); return d[:] }

// syntheticBoot is a firmware log shaped like the e2e boot's: the UKI started, the stub's
// .linux and .initrd events, the kernel's initrd event; and the reference values that match.
func syntheticBoot() (*firmwareReplay, *reference.Values) {
	ref := &reference.Values{UKI: reference.UKI{AuthenticodeSHA256: hex.EncodeToString(digestOf("uki")), LinuxAuthenticodeSHA256: hex.EncodeToString(digestOf("linux"))}}
	covered := map[int]bool{}
	for _, pcr := range eventlog.QuotedPCRs {
		covered[pcr] = true
	}
	fr := &firmwareReplay{covered: covered, events: map[int][]FirmwareEvent{
		4: {{Seq: 1, Index: 4, Type: EvEFIAction, Digest: digestOf("Calling EFI Application from Boot Option")},
			{Seq: 2, Index: 4, Type: EvEFIBootServicesApplication, Digest: digestOf("uki")}},
	}}
	v := make([]byte, 32)
	for i, sec := range []string{".linux", ".initrd"} {
		ref.PCR11.Events = append(ref.PCR11.Events, reference.SectionEvent{Section: sec,
			NameDigest: hex.EncodeToString(digestOf(sec + "\x00")), DataDigest: hex.EncodeToString(digestOf("data" + sec))})
		for j, d := range [][]byte{digestOf(sec + "\x00"), digestOf("data" + sec)} {
			fr.events[11] = append(fr.events[11], FirmwareEvent{Seq: 10 + 2*i + j, Index: 11, Type: EvIPL, Digest: d})
			v = extend(crypto.SHA256, v, d)
		}
	}
	ref.PCR11.Value = hex.EncodeToString(v)
	ref.PCR9.Initrd = hex.EncodeToString(digestOf("data.initrd"))
	fr.events[9] = []FirmwareEvent{{Seq: 20, Index: 9, Type: EvEventTag, Digest: digestOf("data.initrd"), Data: []byte("Linux initrd")}}
	return fr, ref
}

func TestCheckUKITPM(t *testing.T) {
	fr, ref := syntheticBoot()
	m, err := checkUKITPM(fr, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.PCR11Stub != ref.PCR11.Value || len(m.Notes) != 1 || !strings.Contains(m.Notes[0], "no .cmdline") {
		t.Errorf("match %+v", m)
	}
	for _, c := range []struct {
		name string
		edit func(fr *firmwareReplay)
		want string
	}{
		{"command line override in PCR 12", func(fr *firmwareReplay) {
			fr.events[12] = []FirmwareEvent{{Seq: 30, Index: 12, Type: EvIPL, Digest: digestOf("x"), Data: []byte("console=ttyS0 init=/bin/sh")}}
		}, `PCR 12 holds 1 event(s), expected none (first: log event 30, type 0xd, "console=ttyS0 init=/bin/sh")`},
		{"system extension in PCR 13", func(fr *firmwareReplay) {
			fr.events[13] = []FirmwareEvent{{Seq: 31, Index: 13, Type: EvIPL, Digest: digestOf("x"), Data: []byte("ext.raw")}}
		}, "PCR 13 holds 1 event(s)"},
		{"no boot application", func(fr *firmwareReplay) { fr.events[4] = fr.events[4][:1] }, "PCR 4 holds no event with the UKI's Authenticode"},
		{"boot loader first", func(fr *firmwareReplay) {
			fr.events[4] = append([]FirmwareEvent{{Seq: 0, Index: 4, Type: EvEFIBootServicesApplication, Digest: digestOf("shim")}}, fr.events[4]...)
		}, "PCR 4: log event 0 (type 0x80000003, \"0 bytes of data\") has digest " + hex.EncodeToString(digestOf("shim"))},
		{"another application relabelled as an action", func(fr *firmwareReplay) {
			// The host's own application, its event retyped and given the boot manager's text:
			// the digest is not the hash of that text.
			fr.events[4] = append([]FirmwareEvent{{Seq: 0, Index: 4, Type: EvEFIAction, Digest: digestOf("host's loader"), Data: []byte("Calling EFI Application from Boot Option")}}, fr.events[4]...)
		}, "(type 0x80000007, \"Calling EFI Application from Boot Option\") has digest " + hex.EncodeToString(digestOf("host's loader"))},
		{"the UKI twice", func(fr *firmwareReplay) { fr.events[4] = append(fr.events[4], fr.events[4][1]) }, "the UKI was started twice"},
		{"the kernel started by the boot manager after the UKI returned", func(fr *firmwareReplay) {
			fr.events[4] = append(fr.events[4],
				FirmwareEvent{Seq: 40, Index: 4, Type: EvEFIAction, Digest: digestOf("Returning from EFI Application from Boot Option")},
				FirmwareEvent{Seq: 41, Index: 4, Type: EvEFIAction, Digest: digestOf("Calling EFI Application from Boot Option")},
				FirmwareEvent{Seq: 42, Index: 4, Type: EvEFIBootServicesApplication, Digest: digestOf("linux")})
		}, "log event 42 (type 0x80000003, \"0 bytes of data\") has digest " + hex.EncodeToString(digestOf("linux"))},
		{"a driver before the UKI", func(fr *firmwareReplay) {
			fr.events[2] = []FirmwareEvent{{Seq: 3, Index: 2, Type: 0x80000004, Digest: digestOf("driver")}}
		}, "PCR 2 log event 3 (type 0x80000004, \"0 bytes of data\") has digest"},
		{"PCR 12 not quoted", func(fr *firmwareReplay) { delete(fr.covered, 12) }, "the quote does not cover PCRs 12"},
		{"stub event missing", func(fr *firmwareReplay) { fr.events[11] = fr.events[11][:3] }, "stub event 4 has no event"},
		{"extra stub event", func(fr *firmwareReplay) {
			fr.events[11] = append(fr.events[11], FirmwareEvent{Seq: 40, Index: 11, Type: EvIPL, Digest: digestOf(".cmdline\x00")})
		}, "expected no further event"},
		{"another initrd for the kernel", func(fr *firmwareReplay) { fr.events[9][0].Digest = digestOf("other") }, "PCR 9 log event 20 (\"Linux initrd\")"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fr, ref := syntheticBoot()
			c.edit(fr)
			_, err := checkUKITPM(fr, ref, nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("checkUKITPM: %v, want %q", err, c.want)
			}
		})
	}
	// Both deviations are named at once.
	fr, ref = syntheticBoot()
	fr.events[4][1].Digest = digestOf("forged")
	fr.events[11][3].Digest = digestOf("forged initrd")
	_, err = checkUKITPM(fr, ref, nil)
	if err == nil || !strings.Contains(err.Error(), "PCR 4: ") || !strings.Contains(err.Error(), "PCR 11 after systemd-stub is ") {
		t.Fatalf("checkUKITPM: %v, want PCR 4 and PCR 11 named", err)
	}
}

func TestCheckCmdline(t *testing.T) {
	fr, ref := syntheticBoot()
	cl := "console=ttyS0 roothash=ab"
	ref.Cmdline = &cl
	b, _ := reference.LoadOptions(cl)
	lo, proc := sha256.Sum256(b), sha256.Sum256([]byte(cl+"\n"))
	ref.PCR9.LoadOptions = hex.EncodeToString(lo[:])
	fr.events[9] = append([]FirmwareEvent{{Seq: 19, Index: 9, Type: EvEventTag, Digest: lo[:]}}, fr.events[9]...)
	m, err := checkUKITPM(fr, ref, &Cmdline{SHA256: hex.EncodeToString(proc[:])})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.Cmdline, "load options (PCR 9)") || !strings.Contains(m.Cmdline, "cvmboot.cmdline record") {
		t.Errorf("cmdline match %q", m.Cmdline)
	}
	other := sha256.Sum256([]byte(cl + " init=/bin/sh\n"))
	if _, err := checkUKITPM(fr, ref, &Cmdline{SHA256: hex.EncodeToString(other[:])}); err == nil || !strings.Contains(err.Error(), "cvmboot measured a kernel command line with SHA-256 "+hex.EncodeToString(other[:])) {
		t.Errorf("another /proc/cmdline: %v", err)
	}
	if _, err := checkUKITPM(fr, ref, nil); err == nil || !strings.Contains(err.Error(), "no cvmboot.cmdline record") {
		t.Errorf("no cmdline record: %v", err)
	}
}

// systemd-pcrphase's words after cvmboot's events are recognized in PCR 11 (they keep no log
// on systemd 252); other unlogged extends are not.
func TestReplayRuntimePhases(t *testing.T) {
	v := make([]byte, 32)
	for _, w := range []string{"sysinit", "ready"} {
		v = extend(crypto.SHA256, v, digestOf(w))
	}
	fr, err := replayFirmware(PlatformTPM, eventlog.KindPCR, nil, map[int][]byte{11: v, 15: make([]byte, 32)}, nil, nil)
	if err != nil || strings.Join(fr.runtimePhases, ",") != "sysinit,ready" {
		t.Fatalf("replay: %v, phases %v", err, fr)
	}
	w := extend(crypto.SHA256, v, digestOf("shutdown"))
	if _, err := replayFirmware(PlatformTPM, eventlog.KindPCR, nil, map[int][]byte{11: w}, nil, nil); err == nil || !strings.Contains(err.Error(), "PCR 11 is") {
		t.Fatalf("replay with an unknown extend: %v", err)
	}
	if _, err := replayFirmware(PlatformTPM, eventlog.KindPCR, nil, map[int][]byte{15: v}, nil, nil); err == nil {
		t.Fatal("runtime phases accepted in PCR 15")
	}
}

func TestCheckUKITDX(t *testing.T) {
	auth := strings.Repeat("ab", 48)
	ref := &reference.Values{UKI: reference.UKI{AuthenticodeSHA384: auth}, Stub: reference.Stub{Major: 252}}
	d, _ := hex.DecodeString(auth)
	fr := &firmwareReplay{events: map[int][]FirmwareEvent{1: {{Seq: 5, Index: 1, Type: EvEFIBootServicesApplication, Digest: d}}}}
	m, err := checkUKITDX(fr, ref, nil)
	if err != nil || len(m.Notes) == 0 || !strings.Contains(m.Notes[0], "systemd-stub 252 measures nothing into the TDX registers") {
		t.Fatalf("checkUKITDX: %+v, %v", m, err)
	}
	ref.RTMR2 = &reference.RTMR2{Events: []reference.SectionEvent384{{Section: ".linux", NameDigest: strings.Repeat("01", 48), DataDigest: strings.Repeat("02", 48)}}}
	if _, err := checkUKITDX(fr, ref, nil); err == nil || !strings.Contains(err.Error(), "RTMR 2's systemd-stub event 1 is no further event, the UKI's is 0101") {
		t.Fatalf("stub 256 UKI without its RTMR 2 events: %v", err)
	}
	// A stub-256 boot: the stub's .initrd data event has the digest of the kernel's initrd
	// event that follows; both are the UKI's.
	h := func(b byte) []byte { return bytes.Repeat([]byte{b}, 48) }
	ref.RTMR2.Events = append(ref.RTMR2.Events, reference.SectionEvent384{Section: ".initrd", NameDigest: strings.Repeat("03", 48), DataDigest: strings.Repeat("04", 48)})
	ref.PCR9.InitrdSHA384, ref.PCR9.LoadOptionsSHA384 = strings.Repeat("04", 48), strings.Repeat("05", 48)
	for i, b := range []byte{1, 2, 3, 4, 5, 4} {
		fr.events[2] = append(fr.events[2], FirmwareEvent{Seq: 10 + i, Index: 2, Type: EvIPL, Digest: h(b)})
	}
	if _, err := checkUKITDX(fr, ref, nil); err != nil {
		t.Fatalf("genuine stub 256 boot: %v", err)
	}
	fr.events[2] = append(fr.events[2], FirmwareEvent{Seq: 20, Index: 2, Type: EvIPL, Digest: h(9), Data: []byte("grub_cmd: linux /vmlinuz")})
	if _, err := checkUKITDX(fr, ref, nil); err == nil || !strings.Contains(err.Error(), `tdx: RTMR 2 log event 20 ("grub_cmd: linux /vmlinuz") has digest 0909`) {
		t.Fatalf("an extra RTMR 2 event: %v", err)
	}
	fr.events[1][0].Digest = make([]byte, 48)
	if _, err := checkUKITDX(fr, ref, nil); err == nil || !strings.Contains(err.Error(), "tdx: the CCEL does not show the expected UKI: RTMR 1: log event 5 (type 0x80000003, \"0 bytes of data\") has digest 0000") {
		t.Fatalf("another UKI: %v", err)
	}
}

func TestSafe(t *testing.T) {
	for in, want := range map[string]string{"v1.2": "v1.2", "a\nplatform tpm: verified": `"a\nplatform tpm: verified"`, "\x1b[2K": `"\x1b[2K"`, "é": "é"} {
		if got := safe(in); got != want {
			t.Errorf("safe(%q) = %s, want %s", in, got, want)
		}
	}
}
