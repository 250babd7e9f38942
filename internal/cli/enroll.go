package cli

import (
	"fmt"
	"io"

	"github.com/cvmboot/cvmboot/internal/persist"
	"github.com/cvmboot/cvmboot/internal/tee"
)

func enrollCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("enroll", "enroll --uki FILE --sha256 HEX", `
Prepares the persistent root (root.persistent) for a new UKI. It predicts the PCRs 2, 4, 9,
11 and 12 the UKI will give in the initramfs, from the token of the UKI that booted now and
the firmware's TPM event log (it first replays this boot against that token, and refuses
when they differ), and leaves the request on the root (`+persist.RequestPath+`). The next
boot, still with the current UKI, seals a new secret to those values in a new keyslot; the
first boot of the new UKI opens the root with it and removes the keyslots of older UKIs (a
host that saved the header can restore them: see SECURITY.md). --sha256 is the UKI's
SHA-256 as the owner knows it: the file may come from where the host writes (the ESP), and
a key sealed for the host's UKI is the host's. Run it as root in the booted system. Boots
with cvmboot as PID 1 and with its systemd-initrd units (cvmboot-root.service) both carry
requests out.`, stderr)
	uki := fs.String("uki", "", "the UKI that will boot next")
	sum := fs.String("sha256", "", "the SHA-256 of the UKI file, from its builder (hex)")
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(fs, stderr, "no arguments are taken, found %q", fs.Args())
	}
	if *uki == "" || *sum == "" {
		return usageError(fs, stderr, "--uki and --sha256 are required")
	}
	req, part, err := persist.Enroll(persist.EnrollOptions{UKI: *uki, SHA256: *sum, FirmwareLog: tee.FirmwareLogPath})
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot enroll: %v\n", err)
		return ExitFailed
	}
	fmt.Fprintf(stdout, "enrollment request for UKI %s (sha256 %s) written to /%s for the persistent root %s\n", *uki, req.UKISHA256, persist.RequestPath, part)
	for i, p := range req.PCRs {
		fmt.Fprintf(stdout, "  PCR %2d: %s\n", p, req.Values[i])
	}
	fmt.Fprintln(stdout, "reboot with the current UKI to seal the new keyslot, then boot the new UKI")
	return ExitOK
}
