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
	"strings"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/teeverify"
)

// Exit codes (cmdkit's): 1 is evidence that does not verify.
const (
	ExitOK       = cmdkit.ExitOK
	ExitMismatch = cmdkit.ExitFailed
	ExitUsage    = cmdkit.ExitUsage
	ExitIO       = cmdkit.ExitIO
)

const exitHelp = `Exit status: 0 verified, 1 the evidence does not verify (the first failed check
is named), 2 usage error, 3 a file could not be read.
`

const mainUsage = `Usage: cvmboot evidence COMMAND [options]

Check attestation evidence written by cvmboot (evidence.json, the event log, the
SEV-SNP report, TDX quote or TPM quote) offline.

Commands:
  verify DIR [options]    verify an evidence directory and print what it proves

Run 'cvmboot evidence verify --help' for its options.

` + exitHelp

const verifyUsage = `Usage: cvmboot evidence verify DIR [--expect-roothash H] [--trusted-roots F]
                               [--nonce HEX] [--json] [--allow-unsigned] [--allow-debug]

Verify the evidence in DIR: file digests, the event log, the nonce, the REPORT_DATA
binding of every report or quote, their signature chains (SEV-SNP: VCEK up to AMD's
ARK; TDX: PCK chain up to Intel's root; TPM: a pinned attestation key), the event
log replayed against the quoted registers (TPM PCR 15, TDX RTMR 3), and the root
hash. Nothing is fetched from the network. On success the claims are printed: root
hash, storage encryption, overlay, configuration digest, boot phases.

Options:
  --expect-roothash H   the dm-verity root hash the root must have been verified against
  --trusted-roots F     PEM file: CERTIFICATE blocks (AMD ARK/ASK, Intel root CA) used
                        instead of the built-in vendor roots, and PUBLIC KEY blocks
                        pinning TPM attestation keys
  --nonce HEX           the nonce the evidence must be bound to; without it the nonce
                        is taken from the evidence and freshness is not established
  --json                print the claims as JSON
  --allow-unsigned      accept evidence whose signer cannot be established (TDREPORT,
                        SEV-SNP report without certificates, unpinned TPM key); the
                        claims say so
  --allow-debug         accept a TEE guest running with debugging enabled

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
	allowUnsigned := fs.Bool("allow-unsigned", false, "")
	allowDebug := fs.Bool("allow-debug", false, "")
	usage := c.UsageError
	pos, code, ok := c.Parse(fs, args, -1)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return usage("expected one evidence directory, found %d argument(s) (%s)", len(pos), strings.Join(pos, " "))
	}
	opts := evidence.Options{
		ExpectRootHash: strings.ToLower(*rootHash),
		AllowUnsigned:  *allowUnsigned,
		AllowDebug:     *allowDebug,
		Signatures:     teeverify.Verifier{},
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
	fmt.Fprintf(stdout, "%s: verified\n%s", pos[0], claims)
	return ExitOK
}
