package main

import (
	"encoding/json"
	"io"
	"strconv"
	"strings"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

const referenceValuesUsage = `Usage: cvmboot-host reference-values UKI [--format json|trustee] [--phases LIST]
                                       [--stub-version N] [--initdata FILE]

Compute, from the UKI file alone, what the firmware and systemd-stub measure when they boot
it, and TPM PCR 11 once cvmboot's initramfs has measured its boot phases (SHA-256 bank):

  uki.authenticode_sha256   the UKI's Authenticode (PE image) digest: the digest of the PCR 4
                            event the firmware logs when it loads the UKI (as pesign -h)
  uki.authenticode_sha384   the same with SHA-384: the digest of the RTMR 1 event TDX
                            firmware logs for it (as osslsigncode extract-data -h sha384 for
                            a file without unaligned trailing data, which osslsigncode pads)
  uki.linux_authenticode_*  the same for the kernel in .linux, which stubs that start it
                            through the firmware's LoadImage (Debian 12's 252.39 among them,
                            per the e2e firmware logs) measure as a second PCR 4 / RTMR 1 event
  pcr11.events              systemd-stub's PCR 11 measurements, section name then data, in
                            the stub's order for the version its .sdmagic names (252-257;
                            checked against systemd-measure 252, 254 and 257)
  pcr11.value               PCR 11 after the stub (as systemd-measure calculate --phase=)
  pcr11.value_after_phases  PCR 11 after the phase words too: by default enter-initrd and
                            leave-initrd, which cvmboot measures in its initramfs
  rtmr2.events, .value      TDX RTMR 2 after the stub: the same section events with SHA-384
                            digests, which systemd-stub 256 and later also measures through
                            the CC protocol (PCR 11 maps to RTMR 2). Absent for older stubs,
                            which measure nothing into the RTMRs: notes says so
  pcr12                     PCR 12 as a clean boot leaves it: zeros (no command-line
                            override, credentials, confexts or add-ons measured)
  pcr9.load_options, .initrd  the kernel's EFI stub's events (SHA-256 and _sha384): the
                            .cmdline as load options (UTF-16LE with its NUL; Linux 6.1 on)
                            and the .initrd; pcr9.value after both (checked against the
                            firmware log of the e2e boots: Debian's 6.1 kernel, stub 252)
  cmdline                   the .cmdline section

rtmr2.value is RTMR 2 right after the stub. What is measured into RTMR 2 later is not in it:
a kernel that measures through the CC protocol (Linux 6.9 and later, when the firmware has
no TCG2 protocol) adds its initrd and command-line events (PCR 9), and a quote then shows
another RTMR 2; compare the CC event log's first RTMR 2 events with rtmr2.events instead.

Not computed: the PCR 4 and RTMR 1 values (they also hold firmware and boot-loader events;
only the UKI's own event digests are given), RTMR 2 with the kernel's events, TDX MRTD and
RTMR 0, the SEV-SNP launch measurement (both measure the firmware, not the UKI), the TPM's
SHA-1 and SHA-384 banks; pcr9.load_options for a .cmdline with control characters (the stub
rewrites them) and pcr9.initrd for a UKI with .ucode (the stub prepends it), and pcr9.value
then: the verifier refuses the kernel's event of such a UKI. pcr9.initrd is given for
systemd-stub 252 only (257 passes the kernel an initrd it assembles: the e2e firmware log
shows another digest; 253-256 are unchecked), and assumes the stub adds
no credentials or system extensions to the initrd.

Options:
  --format F        json (default): cvmboot's reference-value document (pkg/reference);
                    trustee: {"tpm_pcr11":[V],"snp_pcr11":[V],"tdx_pcr11":[V]} with V the
                    PCR 11 value after the phases, and "rtmr_2":[rtmr2.value] when RTMR 2 is
                    computed: the names Trustee's default attestation policy queries, in the
                    shape of its sample reference-value provenance. rtmr_1, mr_td and
                    snp_launch_measurement, which that policy also queries (its TDX check
                    needs rtmr_1 next to rtmr_2), are not given: they depend on the firmware
                    binary and its events, not on the UKI alone
  --phases LIST     colon-separated phase words measured after the stub ("" for none); add
                    sysinit:ready when the booted system's systemd-pcrphase measures them
                    before the quote is taken
  --stub-version N  apply systemd-stub N's measurement rules instead of .sdmagic's version
  --initdata FILE   a Confidential Containers initdata document (TOML): its digest (of the
                    exact bytes) and its bindings, initdata.host_data (SEV-SNP HOST_DATA),
                    .mr_config_id (TDX MRCONFIGID), .pcr8 (vTPM PCR 8 after the one extend;
                    sha256 documents only); trustee: "init_data" lists them (two for a
                    sha384 or sha512 document), in the hex
                    Trustee's verifiers give the init_data claim on each platform

Refused (exit 1): a file that is not a well-formed PE image, a stub before 252 or after 257,
and UKIs whose PCR 11 depends on the boot or is ambiguous (.profile and .dtbauto sections
from stub 257 on, a measured section name present twice or extended, ".linuxX").

` + cmdkit.ExitCodes

func referenceValues(args []string, stdout, stderr io.Writer) int {
	c := cmdkit.Cmd{Name: "cvmboot-host reference-values", Usage: referenceValuesUsage, Stdout: stdout, Stderr: stderr}
	fs := cmdkit.NewFlagSet("reference-values")
	format := fs.String("format", "json", "")
	phases := fs.String("phases", strings.Join(reference.InitramfsPhases, ":"), "")
	stubVersion := fs.String("stub-version", "", "")
	initdataFile := fs.String("initdata", "", "")
	pos, code, ok := c.Parse(fs, args, 1)
	if !ok {
		return code
	}
	if *format != "json" && *format != "trustee" {
		return c.UsageError("--format %q: expected json or trustee", *format)
	}
	opts := reference.Options{Phases: []string{}}
	if *phases != "" {
		opts.Phases = strings.Split(*phases, ":")
	}
	for _, p := range opts.Phases {
		if _, err := reference.PhaseDigest(p); err != nil {
			return c.UsageError("--phases %q: %v", *phases, err)
		}
	}
	if *stubVersion != "" {
		n, err := strconv.Atoi(*stubVersion)
		if err != nil || n <= 0 {
			return c.UsageError("--stub-version %q: expected a systemd version number such as 252", *stubVersion)
		}
		opts.StubMajor = n
	}
	v, err := reference.Compute(pos[0], opts)
	if err != nil {
		return c.Fail(cmdkit.CodeOf(err), "%v", err)
	}
	if *initdataFile != "" {
		if v.InitData, err = reference.ComputeInitData(*initdataFile); err != nil {
			return c.Fail(cmdkit.CodeOf(err), "--initdata: %v", err)
		}
	}
	var out any = v
	if *format == "trustee" {
		out = v.Trustee()
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return c.Fail(cmdkit.ExitFailed, "%v", err)
	}
	if _, err := stdout.Write(append(b, '\n')); err != nil {
		return c.Fail(cmdkit.ExitIO, "write: %v", err)
	}
	return cmdkit.ExitOK
}
