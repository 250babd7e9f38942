package cli

import (
	"fmt"
	"io"
)

// The guest binary (cmd/cvmboot) leaves the verifier out: it runs on the verifier's machine,
// and its signature-chain checks (protobuf, HTTP for certificate fetches) would put the boot
// binary over its 12 MiB budget. cmd/cvmboot-host (bin/cvmboot-host) replaces this command
// with the verifier (HostCommands).
var evidenceCommand = Command{
	Name: "evidence", Summary: "verify evidence offline: in the host build (bin/cvmboot-host)",
	Run: func(args []string, stdout, stderr io.Writer) int {
		fmt.Fprintln(stderr, "cvmboot evidence: this is the guest build, which has no verifier; run bin/cvmboot-host evidence verify (make build writes it from ./cmd/cvmboot-host)")
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
			fmt.Fprintln(stdout, "Usage: cvmboot-host evidence verify DIR [--expect-uki UKI | --reference-values F] [--expect-roothash H] [--trusted-roots F] [--nonce HEX] [--json] [--allow-unsigned=PLATFORMS] [--allow-unknown-uki]")
			return ExitOK
		}
		return ExitUsage
	},
}
