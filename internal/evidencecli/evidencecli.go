// Package evidencecli implements `cvmboot evidence`: the offline verifier a relying party runs
// on an evidence directory written by the boot (see pkg/evidence).
//
// Main receives the arguments after "evidence", starting with the subcommand. It links the
// vendors' verification libraries (pkg/evidence/teeverify, about 5.8 MB), so it belongs in a
// verifier binary rather than in the boot agent.
package evidencecli

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"slices"
	"strings"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/firmwarelog"
	"github.com/cvmboot/cvmboot/pkg/evidence/teeverify"
	"github.com/cvmboot/cvmboot/pkg/reference"
)

// Exit codes (cmdkit's): 1 is evidence that does not verify.
const (
	ExitOK       = cmdkit.ExitOK
	ExitMismatch = cmdkit.ExitFailed
	ExitUsage    = cmdkit.ExitUsage
	ExitIO       = cmdkit.ExitIO
)

const exitHelp = `Exit status: 0 verified, or accepted with the links the options waived (the first
line and the JSON's chain.waived name them), 1 the evidence does not verify (the first
failed check is named), 2 usage error, 3 a file could not be read.
`

const mainUsage = `Usage: cvmboot evidence COMMAND [options]

Check attestation evidence written by cvmboot (evidence.json, the event log, the
SEV-SNP report, TDX quote or TPM quote) offline.

Commands:
  verify DIR [options]    verify an evidence directory and print what it proves

Run 'cvmboot evidence verify --help' for its options.

` + exitHelp

const verifyUsage = `Usage: cvmboot evidence verify DIR [--expect-uki UKI | --reference-values F]
                               [--expect-roothash H] [--trusted-roots F] [--nonce HEX]
                               [--expect-measurement HEX] [--expect-mrtd HEX] [--json]
                               [--allow-unsigned=PLATFORMS] [--allow-unknown-uki]
                               [--expect-initdata FILE] [--allow-debug]

Verify the evidence in DIR and print what it proves. The boot claims (root hash, storage
encryption, overlay, configuration, command line) are printed as verified only when this
chain holds for one attestation:

  hardware      the signature chain (SEV-SNP: VCEK up to AMD's ARK; TDX: PCK chain up to
                Intel's root, signed by Intel's TD quoting enclave; TPM: a pinned
                attestation key) over registers bound to the event log and the nonce
  firmware-log  the firmware's event log (TPM: binary_bios_measurements; TDX: the CCEL)
                and cvmboot's log replay to every attested register
  uki           the firmware started the expected UKI and no other application it
                measured (every PCR 4 / RTMR 1 event, judged by its digest, is the UKI's
                Authenticode, its kernel's, a boot-manager action, a separator or, on
                RTMR 1, the GPT; no driver in PCR 2), systemd-stub measured its sections
                (PCR 11; RTMR 2 from systemd 256), every kernel event is its initrd or
                command line (PCR 9, RTMR 2), nothing came from outside it (PCR 12, 13:
                TPM only), and cvmboot measured its command line
  cvmboot-log   a register holds every record cvmboot measured (PCR 11 and 15, RTMR 3),
                on a TPM the boot's end included (the cvmboot.handoff record)

A missing link fails (exit 1, the link named) unless an option below waives it; a link
that is present but wrong (another UKI, an extend no log explains) always fails. Records
measured after the boot's end are shown as runtime events and change no boot claim. The
firmware itself (PCR 0, 1, 3, 5-8, 14; TDX RTMR 0) is not judged: pin it by its launch
measurement on a TEE. Nothing is fetched from the network.

Options:
  --expect-uki UKI          compute the reference values of this UKI file and require them
  --reference-values F      require those of a cvmboot-host reference-values document
  --expect-roothash H       the dm-verity root hash the root must have been verified against
  --trusted-roots F         PEM file: CERTIFICATE blocks (AMD ARK/ASK, Intel root CA) used
                            instead of the built-in vendor roots, and PUBLIC KEY blocks
                            pinning TPM attestation keys
  --nonce HEX               the nonce the evidence must be bound to; without it the nonce
                            is taken from the evidence and freshness is not established
  --expect-measurement HEX  the SEV-SNP launch measurement the report must carry
  --expect-mrtd HEX         the TDX MRTD the quote must carry
  --expect-initdata FILE    the Confidential Containers initdata document the boot must
                            have taken (its digest; SEV-SNP HOST_DATA and TDX MRCONFIGID
                            must carry it too, a vTPM's PCR 8 replays with it); default:
                            the reference values' initdata, if they have one
  --json                    print the claims as JSON
  --allow-unsigned=LIST     waive the hardware link for these platforms (comma-separated:
                            sev-snp, tdx, tpm): accept a TDREPORT, an SEV-SNP report without
                            certificates, a TPM quote by an unpinned key; the claims say so
  --allow-unknown-uki       waive the cvmboot-log link (a log bound by REPORT_DATA only:
                            SEV-SNP, TDX before Linux 6.16; on a TPM, a missing firmware log
                            or cvmboot.handoff record) and, without reference values, the
                            firmware-log and uki links; the claims say so
  --allow-debug             accept a TEE guest running with debugging enabled

` + exitHelp

// Main runs the evidence command with args (the subcommand first) and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	return cmdkit.Dispatch("cvmboot evidence", mainUsage, []cmdkit.Sub{{Name: "verify", Run: verify}}, args, stdout, stderr)
}

func verify(args []string, stdout, stderr io.Writer) int {
	const name = "cvmboot evidence verify"
	c := cmdkit.Cmd{Name: name, Usage: verifyUsage, Stdout: stdout, Stderr: stderr}
	fs := cmdkit.NewFlagSet("verify")
	rootHash := fs.String("expect-roothash", "", "")
	rootsFile := fs.String("trusted-roots", "", "")
	nonceHex := fs.String("nonce", "", "")
	asJSON := fs.Bool("json", false, "")
	allowUnsigned := fs.String("allow-unsigned", "", "")
	allowUnknownUKI := fs.Bool("allow-unknown-uki", false, "")
	expectUKI := fs.String("expect-uki", "", "")
	refFile := fs.String("reference-values", "", "")
	expectMeasurement := fs.String("expect-measurement", "", "")
	expectMRTD := fs.String("expect-mrtd", "", "")
	allowDebug := fs.Bool("allow-debug", false, "")
	initdataFile := fs.String("expect-initdata", "", "")
	usage := c.UsageError
	pos, code, ok := c.Parse(fs, args, -1)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return usage("expected one evidence directory, found %d argument(s) (%s)", len(pos), strings.Join(pos, " "))
	}
	opts := evidence.Options{
		ExpectRootHash:  strings.ToLower(*rootHash),
		AllowUnknownUKI: *allowUnknownUKI,
		AllowDebug:      *allowDebug,
		Signatures:      teeverify.Verifier{},
		FirmwareLogs:    firmwarelog.Parser{},
	}
	if *allowUnsigned != "" {
		for _, p := range strings.Split(*allowUnsigned, ",") {
			if !slices.Contains(evidence.AllPlatforms, evidence.Platform(p)) {
				return usage("--allow-unsigned %q: expected a comma-separated list of sev-snp, tdx, tpm", *allowUnsigned)
			}
			opts.AllowUnsigned = append(opts.AllowUnsigned, evidence.Platform(p))
		}
	}
	for _, m := range []struct {
		flag, value string
		p           evidence.Platform
	}{{"--expect-measurement", *expectMeasurement, evidence.PlatformSNP}, {"--expect-mrtd", *expectMRTD, evidence.PlatformTDX}} {
		if m.value == "" {
			continue
		}
		b, err := hex.DecodeString(m.value)
		if err != nil || len(b) != 48 {
			return usage("%s %q: expected 48 bytes of hex", m.flag, m.value)
		}
		if opts.ExpectMeasurement == nil {
			opts.ExpectMeasurement = map[evidence.Platform][]byte{}
		}
		opts.ExpectMeasurement[m.p] = b
	}
	if *expectUKI != "" && *refFile != "" {
		return usage("--expect-uki and --reference-values both given: give one")
	}
	if *expectUKI != "" || *refFile != "" {
		flagName, load := "--expect-uki", func() (*reference.Values, error) { return reference.Compute(*expectUKI, reference.Options{}) }
		if *refFile != "" {
			flagName, load = "--reference-values", func() (*reference.Values, error) { return reference.Read(*refFile) }
		}
		ref, err := load()
		var pe *iofs.PathError
		switch {
		case errors.As(err, &pe):
			fmt.Fprintf(stderr, "%s: %s: %v\n", name, flagName, err)
			return ExitIO
		case err != nil:
			return usage("%s: %v", flagName, err)
		}
		opts.Reference = ref
	}
	if *initdataFile != "" {
		d, err := reference.ComputeInitData(*initdataFile)
		var pe *iofs.PathError
		switch {
		case errors.As(err, &pe):
			fmt.Fprintf(stderr, "%s: --expect-initdata: %v\n", name, err)
			return ExitIO
		case err != nil:
			return usage("--expect-initdata: %v", err)
		}
		opts.ExpectInitData = d
	}
	if _, err := hex.DecodeString(opts.ExpectRootHash); err != nil {
		return usage("--expect-roothash %q is not hex", *rootHash)
	}
	nonceSet := false
	fs.Visit(func(f *flag.Flag) { nonceSet = nonceSet || f.Name == "nonce" })
	if nonceSet {
		n, err := hex.DecodeString(*nonceHex)
		if err != nil {
			return usage("--nonce %q is not hex (an even number of digits 0-9, a-f)", *nonceHex)
		}
		if len(n) < eventlog.MinNonceSize || len(n) > eventlog.MaxNonceSize {
			return usage("--nonce is %d bytes: expected %d to %d bytes, random and fresh for each request", len(n), eventlog.MinNonceSize, eventlog.MaxNonceSize)
		}
		opts.Nonce = n
	}
	if *rootsFile != "" {
		roots, err := evidence.ReadTrustedRoots(*rootsFile)
		var verr *evidence.Error
		switch {
		case errors.As(err, &verr):
			return usage("--trusted-roots: %v", verr.Msg)
		case err != nil:
			fmt.Fprintf(stderr, "%s: --trusted-roots: %v\n", name, err)
			return ExitIO
		}
		opts.TrustedRoots = roots
	}
	claims, err := evidence.Verify(pos[0], opts)
	var verr *evidence.Error
	switch {
	case errors.As(err, &verr):
		fmt.Fprintf(stderr, "%s: %s: NOT VERIFIED: %v\n", name, pos[0], err)
		return ExitMismatch
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitIO
	}
	if *asJSON {
		b, err := json.MarshalIndent(claims, "", "  ")
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return ExitIO
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return ExitOK
	}
	// "verified" only for the whole chain: a waived link is named instead.
	if w := claims.Chain.Waived; len(w) > 0 {
		fmt.Fprintf(stdout, "%s: accepted with waived links, NOT verified through the whole chain: %s\n%s", pos[0], strings.Join(w, ", "), claims)
		return ExitOK
	}
	fmt.Fprintf(stdout, "%s: verified\n%s", pos[0], claims)
	return ExitOK
}
