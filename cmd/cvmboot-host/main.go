// Command cvmboot-host is cvmboot's host-side tool: every command of the guest binary plus
// the offline evidence verifier, whose signature-chain checks would put the boot binary over
// its size budget. See README.md.
package main

import (
	"os"

	"github.com/cvmboot/cvmboot/internal/cli"
	"github.com/cvmboot/cvmboot/internal/evidencecli"
)

func main() {
	commands := cli.WithCommand(cli.Commands(), cli.Command{
		Name: "evidence", Summary: "verify a boot's evidence offline", Run: evidencecli.Main})
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr, commands))
}
