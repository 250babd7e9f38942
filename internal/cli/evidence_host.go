//go:build verifier

package cli

import "github.com/cvmboot/cvmboot/internal/evidencecli"

// The host build (make build: bin/cvmboot-host) carries the offline verifier; its
// signature-chain checks need libraries that would put the guest binary over its budget.
var evidenceCommand = Command{
	Name: "evidence", Summary: "verify a boot's evidence offline (host build)", Run: evidencecli.Main,
}
