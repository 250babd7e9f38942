// Package serve is `cvmboot serve`, the evidence daemon of the booted system: it answers
// attestation agents on a local Unix socket and watches dm-verity for corrupted blocks.
//
// # Socket
//
// HTTP/1.1 over a Unix stream socket, by default /run/cvmboot/cvmboot.sock, mode 0600 owned by
// root: only root may ask. --group NAME hands the socket to a group (mode 0660 unless --mode
// says otherwise). Under systemd the socket comes from cvmboot-serve.socket (socket
// activation: LISTEN_PID/LISTEN_FDS, the listening socket on fd 3); --socket, --mode and
// --group then do not apply, SocketMode= and SocketGroup= do.
//
// # Endpoints
//
//	GET /status            the boot report, /run/cvmboot/report.json, as written by the boot
//	GET /eventlog          the event log, /run/cvmboot/eventlog (JSON Lines, see package measure)
//	GET /evidence?nonce=HEX
//	                       fresh evidence bound to the caller's nonce and to the boot's event log
//
// Errors are text/plain, one line naming the problem: 400 for a bad request (a nonce that is
// missing, not hex, or longer than 64 bytes; an unknown query parameter), 404 when the boot left
// no report or event log, 405 for another method than GET, 503 when the machine has no TEE
// or TPM, 500 when collecting failed.
//
// # Evidence
//
// Each /evidence request detects the platform again (tee.Detect), opens the existing event log
// and collects with tee.Collect into a fresh temporary directory, which is removed afterwards.
// Collecting never appends to the log: REPORT_DATA = SHA-512(domain ‖ SHA-256(event log) ‖
// nonce) binds the log as the boot left it (plus whatever a later cvmboot stage measured), and
// the log's lock is held while the reports are taken. Requests are served one at a time, since
// the TPM and the TEE report interfaces are single-user devices.
//
// The answer is a bundle, application/json:
//
//	{"format": "cvmboot-evidence-bundle", "version": 1,
//	 "files": {"evidence.json": "<base64>", "eventlog": "<base64>", "tpm-quote.bin": "<base64>", …}}
//
// files holds evidence.json and exactly the files it names (the evidence directory of
// pkg/evidence, README.md there), each base64 (standard alphabet, padded). UnpackBundle writes
// them into a directory that `cvmboot evidence verify DIR --nonce HEX` checks on the verifier's
// machine; it refuses a bundle whose files do not match evidence.json.
//
// # dm-verity corruption
//
// dm-verity reports a block that fails its hash with a KOBJ_CHANGE uevent on the mapped device
// carrying DM_VERITY_ERR_BLOCK_NR=<type>,<block> (type 0 data, 1 metadata; the kernel stops
// sending them after 100 errors per device). The daemon listens on NETLINK_KOBJECT_UEVENT,
// accepts only messages from the kernel, logs each corruption at critical priority (journal
// PRIORITY=2) with the device, its dm name and the block, then applies the corruption policy:
//
//	panic    nothing more: the kernel panics on its own (panic_on_corruption)
//	restart  reboot(2): the kernel restarts on its own with restart_on_corruption; the daemon
//	         reboots in case the table let the error through as EIO
//	ignore   log only (debug images: ignore_corruption lets the block through)
//
// The policy of a device is, in order: --on-corruption; the on_corruption the boot measured in
// the cvmboot.verity event whose target is the device's dm name (what its table enforces);
// verity.on_corruption of the config file (--config, default /etc/cvmboot/config.yaml) with the
// kernel command line's cvmboot.* overrides.
//
// # Client
//
// `cvmboot serve --get PATH` is the client: it asks the daemon for PATH and copies the body to
// standard output (for images without curl or socat).
package serve
