// Command cvmboot is the boot agent for confidential-VM images. See README.md.
package main

import (
	"os"

	"github.com/cvmboot/cvmboot/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr, cli.Commands()))
}
