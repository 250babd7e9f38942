// Command cvmboot-host is cvmboot's host-side tool: every command of the guest binary plus
// the offline evidence verifier, whose signature-chain checks would put the boot binary over
// its size budget, and the reference values of a UKI. See README.md.
package main

import (
	"os"

	"github.com/cvmboot/cvmboot/internal/cli"
	"github.com/cvmboot/cvmboot/internal/evidencecli"
)

func commands() []cli.Command {
	c := cli.WithCommand(cli.Commands(), cli.Command{
		Name: "evidence", Summary: "verify a boot's evidence offline", Run: evidencecli.Main})
	return cli.WithCommand(c, cli.Command{
		Name: "reference-values", Summary: "compute what firmware, systemd-stub and the kernel measure when booting a UKI (PCR 4/RTMR 1 digests, PCR 11, RTMR 2, PCR 9, PCR 12; initdata bindings)", Run: referenceValues})
}

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr, commands()))
}
