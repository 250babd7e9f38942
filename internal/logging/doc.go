// Package logging builds the zap loggers used by cvmboot. A logger fans out to
// up to three sinks chosen at run time:
//
//   - the systemd journal, spoken to directly in its native datagram protocol
//     (no libsystemd, no cgo);
//   - /dev/kmsg, for the agent running as PID 1 in the initramfs where no
//     journal exists yet (the journal later imports the kernel ring buffer);
//   - a human-readable console writer, for CLI tools.
//
// A sink that fails never fails or blocks logging through the other sinks:
// its errors are counted in [Stats] and, unless clearly transient, the sink is
// switched off after its first error.
//
// # Journal fields
//
// Every entry carries these fields:
//
//	MESSAGE             the log message
//	PRIORITY            syslog level, see the mapping below
//	SYSLOG_FACILITY     3 (daemon), as systemd's own tools send
//	SYSLOG_IDENTIFIER   Options.Identifier, default "cvmboot"
//	CODE_FILE, CODE_LINE, CODE_FUNC   the call site, when zap knows it
//	CVMBOOT_LOGGER      the zap logger name, when set
//	CVMBOOT_STACKTRACE  the stack trace, when zap captured one
//
// Each zap field becomes CVMBOOT_<KEY>, KEY being the field key in upper
// snake case, limited to A-Z, 0-9 and '_' (camelCase is split: "rootHash"
// becomes CVMBOOT_ROOT_HASH). Objects and namespaces are flattened with '_'
// ("volume" {"device"} becomes CVMBOOT_VOLUME_DEVICE); arrays are JSON. Names
// are cut at the journal's 64-byte limit. The keys cvmboot code uses are the
// Key constants of this package:
//
//	CVMBOOT_STAGE      boot stage ("verity", "luks", "measure", "overlay", ...)
//	CVMBOOT_DEVICE     block device path
//	CVMBOOT_PATH       file path
//	CVMBOOT_ERROR      zap.Error text
//	CVMBOOT_EXPECTED   expected value in a failed check
//	CVMBOOT_FOUND      value actually found
//	CVMBOOT_PARTITION  partition label or UUID
//	CVMBOOT_REGISTER   TEE/TPM register measured into
//	CVMBOOT_DIGEST     measured digest (hex)
//
// so that `journalctl CVMBOOT_STAGE=verity` selects one stage.
//
// # Priorities
//
// zap levels map to syslog levels as follows:
//
//	Debug  → 7 debug      Info  → 6 info      Warn → 4 warning
//	Error  → 3 err        DPanic, Panic → 2 crit
//	Fatal  → 1 alert
//
// Fatal is deliberately not 0 (emerg): journald forwards emerg to every
// terminal (wall), which is wrong for a CLI tool failing on bad input. zap has
// no notice level, so 5 is unused.
//
// # Kernel log
//
// /dev/kmsg records are "<N>cvmboot[PID]: message key=value ...", one write per
// record, N = LOG_DAEMON·8 + level like systemd (the kernel would otherwise
// tag records from userspace as LOG_USER). Records are kept under 976 bytes,
// the smallest limit any kernel accepts; longer text and multi-line messages
// continue in further records that start with "(cont) ". The kernel rate
// limits writers unless printk_devkmsg is "on": the init path calls
// [LiftKmsgRateLimit] once /proc is mounted.
package logging
