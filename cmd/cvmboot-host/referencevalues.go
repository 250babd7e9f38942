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
                                       [--stub-version N]

Compute, from the UKI file alone, what the firmware and systemd-stub measure when they boot
it, and TPM PCR 11 once cvmboot's initramfs has measured its boot phases (SHA-256 bank):

  uki.authenticode_sha256   the UKI's Authenticode (PE image) digest: the digest of the PCR 4
                            event the firmware logs when it loads the UKI (as pesign -h)
  pcr11.events              systemd-stub's PCR 11 measurements, section name then data, in
                            the stub's order for the version its .sdmagic names (252-257;
                            checked against systemd-measure 252, 254 and 257)
  pcr11.value               PCR 11 after the stub (as systemd-measure calculate --phase=)
  pcr11.value_after_phases  PCR 11 after the phase words too: by default enter-initrd and
                            leave-initrd, which cvmboot measures in its initramfs
  cmdline                   the .cmdline section

Not computed: the PCR 4 value (only the UKI's event digest), PCR 9, PCR 12, TDX RTMR 1 and 2,
the SEV-SNP launch measurement, the SHA-1 and SHA-384 banks.

Options:
  --format F        json (default): cvmboot's reference-value document (pkg/reference);
                    trustee: {"tpm_pcr11":[V],"snp_pcr11":[V],"tdx_pcr11":[V]} with V the
                    PCR 11 value after the phases, the names Trustee's default attestation
                    policy queries, in the shape of its sample reference-value provenance
  --phases LIST     colon-separated phase words measured after the stub ("" for none); add
                    sysinit:ready when the booted system's systemd-pcrphase measures them
                    before the quote is taken
  --stub-version N  apply systemd-stub N's measurement rules instead of .sdmagic's version

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
