// Package luks2cli implements `cvmboot luks2`: formatting and inspecting
// LUKS2 headers with internal/luks2, without cryptsetup.
//
// Main receives the arguments after "luks2", starting with the subcommand
// (format or dump).
package luks2cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
	"github.com/cvmboot/cvmboot/internal/luks2"
)

// Exit codes (cmdkit's): 1 is a failed operation (invalid header, refused format), 3 a
// device or file that could not be opened, read or written.
const (
	ExitOK      = cmdkit.ExitOK
	ExitFailure = cmdkit.ExitFailed
	ExitUsage   = cmdkit.ExitUsage
	ExitIO      = cmdkit.ExitIO
)

const exitHelp = `Exit status: 0 success, 1 failure (invalid header, refused format), 2 usage
error (bad option or argument), 3 a device or file could not be read or written.
`

const mainUsage = `Usage: cvmboot luks2 COMMAND [options]

Write and inspect LUKS2 headers in cryptsetup's on-disk format.

Commands:
  format DEVICE --volume-key-file F [options]   write a new LUKS2 header
  dump DEVICE [--json]                          print the header of DEVICE

Run 'cvmboot luks2 COMMAND --help' for the options of a command.

` + exitHelp

const formatUsage = `Usage: cvmboot luks2 format DEVICE --volume-key-file F [options]

Write a LUKS2 header (both copies and the keyslots area, the first 16 MiB by
default) to DEVICE, a block device or an existing image file, for the volume
key in F. A block device in use (mounted, mapped) is refused. The data area is not touched. With --passphrase-file one keyslot
is added so that cryptsetup can open the volume with that passphrase;
without it the header has no keyslot and the key exists only in F.

Options:
  --volume-key-file F     raw volume key (required): 64 bytes for aes-xts-plain64,
                          96 with --integrity hmac-sha256 (encryption || MAC key),
                          32 with --integrity aead (aes-gcm-random)
  --passphrase-file P     add keyslot 0 for the whole content of P (no newline stripping)
  --kdf pbkdf2|argon2id   keyslot KDF (default argon2id)
  --pbkdf2-iterations N   PBKDF2-sha256 iterations (default 600000, minimum 1000)
  --argon2-time N         Argon2id passes (default 4)
  --argon2-memory KIB     Argon2id memory in KiB (default 1048576, range 32..4194304)
  --argon2-parallel N     Argon2id lanes, 1..4 (default 4)
  --integrity MODE        none (default), hmac-sha256 or aead
  --cipher C              data cipher (default aes-xts-plain64; aes-gcm-random with aead)
  --sector-size N         encryption sector size: 512, 1024, 2048 or 4096 (default 4096)
  --data-offset N         data start in bytes, multiple of 4096 (default 16777216)
  --label L               label, at most 47 bytes
  --subsystem S           subsystem, at most 47 bytes
  --uuid U                UUID (default: random)
  --force                 overwrite an existing LUKS2 header

` + exitHelp

const dumpUsage = `Usage: cvmboot luks2 dump DEVICE [--json]

Print the LUKS2 header of DEVICE in the spirit of 'cryptsetup luksDump',
including the state of both header copies. No key material is printed
(the header holds none).

Options:
  --json                  print the JSON metadata instead (indented)

` + exitHelp

// Main runs the luks2 command with args (the subcommand first) and returns
// the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	const prog = "cvmboot luks2"
	return cmdkit.Dispatch(prog, mainUsage, []cmdkit.Sub{
		cmdkit.NewSub(prog, "format", formatUsage, func(c cmdkit.Cmd, args []string) int { return (&command{c}).format(args) }),
		cmdkit.NewSub(prog, "dump", dumpUsage, func(c cmdkit.Cmd, args []string) int { return (&command{c}).dump(args) }),
	}, args, stdout, stderr)
}

type command struct{ cmdkit.Cmd }

// Bounds on the files read by format (cryptsetup's default key file limit is 8 MiB).
const (
	maxVolumeKeyFile  = 1024
	maxPassphraseFile = 8 << 20
)

// readSecret reads a whole file of at most limit bytes. The caller clears the
// returned buffer.
func readSecret(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		clear(b)
		return nil, err
	}
	if int64(len(b)) > limit {
		clear(b)
		return nil, fmt.Errorf("expected at most %d bytes, found more", limit)
	}
	if len(b) == 0 {
		return nil, errors.New("expected at least one byte, found an empty file")
	}
	return b, nil
}

func (c *command) format(args []string) int {
	fs := cmdkit.NewFlagSet("format")
	keyFile := fs.String("volume-key-file", "", "")
	passFile := fs.String("passphrase-file", "", "")
	kdf := fs.String("kdf", luks2.KDFArgon2id, "")
	iterations := fs.Uint("pbkdf2-iterations", luks2.DefaultPBKDF2Iterations, "")
	argonTime := fs.Uint("argon2-time", luks2.DefaultArgon2Time, "")
	argonMemory := fs.Uint("argon2-memory", luks2.DefaultArgon2MemoryKiB, "")
	argonParallel := fs.Uint("argon2-parallel", luks2.DefaultArgon2Parallel, "")
	integrity := fs.String("integrity", "none", "")
	cipher := fs.String("cipher", "", "")
	sectorSize := fs.Uint("sector-size", luks2.DefaultSectorSize, "")
	dataOffset := fs.Uint64("data-offset", luks2.DefaultDataOffset, "")
	label := fs.String("label", "", "")
	subsystem := fs.String("subsystem", "", "")
	uuid := fs.String("uuid", "", "")
	force := fs.Bool("force", false, "")
	pos, code, ok := c.Parse(fs, args, 1)
	if !ok {
		return code
	}
	usage := c.UsageError
	if *keyFile == "" {
		return usage("--volume-key-file is required")
	}
	modes := map[string]string{"none": luks2.IntegrityNone, "hmac-sha256": luks2.IntegrityHMACSHA256, "aead": luks2.IntegrityAEAD}
	mode, known := modes[*integrity]
	if !known {
		return usage("--integrity: expected none, hmac-sha256 or aead, found %q", *integrity)
	}
	if *kdf != luks2.KDFPBKDF2 && *kdf != luks2.KDFArgon2id {
		return usage("--kdf: expected pbkdf2 or argon2id, found %q", *kdf)
	}
	for name, v := range map[string]uint{"--pbkdf2-iterations": *iterations, "--argon2-time": *argonTime,
		"--argon2-memory": *argonMemory, "--argon2-parallel": *argonParallel, "--sector-size": *sectorSize} {
		if v == 0 || v > 1<<31-1 {
			return usage("%s: expected 1..%d, found %d", name, 1<<31-1, v)
		}
	}
	if *dataOffset == 0 {
		return usage("--data-offset: expected a positive multiple of 4096, found 0")
	}
	device := pos[0]

	key, err := readSecret(*keyFile, maxVolumeKeyFile)
	if err != nil {
		return c.Fail(cmdkit.CodeOf(err), "volume key file %s: %v", *keyFile, err)
	}
	defer clear(key)
	opts := luks2.Options{
		UUID: *uuid, Label: *label, Subsystem: *subsystem, Cipher: *cipher,
		SectorSize: uint32(*sectorSize), Integrity: mode, DataOffset: *dataOffset, VolumeKey: key,
	}
	if *passFile != "" {
		pass, err := readSecret(*passFile, maxPassphraseFile)
		if err != nil {
			return c.Fail(cmdkit.CodeOf(err), "passphrase file %s: %v", *passFile, err)
		}
		defer clear(pass)
		opts.Keyslots = []luks2.KeyslotSpec{{
			Passphrase: pass, KDF: *kdf, Iterations: uint32(*iterations),
			Time: uint32(*argonTime), MemoryKiB: uint32(*argonMemory), Parallel: uint32(*argonParallel),
		}}
	}

	// O_EXCL makes Linux refuse a block device that is mounted or mapped.
	f, err := os.OpenFile(device, os.O_RDWR|os.O_EXCL, 0)
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return c.Fail(ExitIO, "device %s: determining size: %v", device, err)
	}
	if old, err := luks2.Read(f); err == nil && !*force {
		return c.Fail(ExitFailure, "device %s already holds LUKS2 volume %s (label %q); use --force to overwrite it", device, old.UUID, clean(old.Label))
	}
	h, err := luks2.Format(f, size, opts)
	if err != nil {
		return c.Fail(cmdkit.CodeOf(err), "device %s: %v", device, err)
	}
	if err := f.Close(); err != nil {
		return c.Fail(ExitIO, "device %s: %v", device, err)
	}
	seg, _ := h.Metadata.DataSegment()
	integ := "none"
	if seg.Integrity != nil {
		integ = seg.Integrity.Type
	}
	fmt.Fprintf(c.Stdout, "formatted %s: LUKS2 UUID %s, cipher %s, integrity %s, sector %d, data offset %d, %d keyslot(s)\n",
		device, h.UUID, seg.Encryption, integ, seg.SectorSize, seg.Offset, len(h.Metadata.Keyslots))
	return ExitOK
}

func (c *command) dump(args []string) int {
	fs := cmdkit.NewFlagSet("dump")
	asJSON := fs.Bool("json", false, "")
	pos, code, ok := c.Parse(fs, args, 1)
	if !ok {
		return code
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	defer f.Close()
	h, err := luks2.Read(f)
	if err != nil {
		return c.Fail(cmdkit.CodeOf(err), "device %s: %v", pos[0], err)
	}
	if *asJSON {
		var buf bytes.Buffer
		if err := json.Indent(&buf, h.JSON, "", "  "); err != nil {
			return c.Fail(ExitFailure, "device %s: %v", pos[0], err)
		}
		buf.WriteByte('\n')
		if _, err := c.Stdout.Write(buf.Bytes()); err != nil {
			return c.Fail(ExitIO, "%v", err)
		}
		return ExitOK
	}
	var b strings.Builder
	writeDump(&b, pos[0], h)
	if _, err := io.WriteString(c.Stdout, b.String()); err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	return ExitOK
}

// clean makes a header string safe to print: the header is untrusted input
// and could carry terminal escape sequences.
func clean(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func orNone(s, none string) string {
	if s == "" {
		return none
	}
	return clean(s)
}

func idList(ids []int) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	return strings.Join(s, ", ")
}

func sorted[T any](m map[int]T) []int {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func copyState(i int, h *luks2.Header) string {
	st := h.Copies[i]
	switch {
	case st.Err == nil && i == h.Used:
		return fmt.Sprintf("valid, seqid %d, in use", st.SeqID)
	case st.Err == nil:
		return fmt.Sprintf("valid, seqid %d", st.SeqID)
	case !st.Found:
		return "not found"
	}
	return "INVALID: " + clean(st.Err.Error())
}

// writeDump renders the header like cryptsetup luksDump, plus the state of
// both copies. Salts and digests are left to --json.
func writeDump(w io.Writer, device string, h *luks2.Header) {
	m := h.Metadata
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("LUKS header information for %s\n", clean(device))
	p("Version:        2\n")
	p("Epoch:          %d\n", h.SeqID)
	p("Metadata area:  %d [bytes]\n", h.HeaderSize)
	p("Keyslots area:  %d [bytes]\n", m.Config.KeyslotsSize)
	p("UUID:           %s\n", orNone(h.UUID, "(no UUID)"))
	p("Label:          %s\n", orNone(h.Label, "(no label)"))
	p("Subsystem:      %s\n", orNone(h.Subsystem, "(no subsystem)"))
	p("Flags:          %s\n", orNone(clean(strings.Join(m.Config.Flags, " ")), "(no flags)"))
	if len(m.Config.Requirements) > 0 {
		p("Requirements:   %s\n", clean(strings.Join(m.Config.Requirements, " ")))
	}
	for _, r := range m.Repaired {
		p("Repaired:       %s (in memory only)\n", clean(r))
	}
	p("Primary copy:   offset %d, %s\n", h.Copies[0].Offset, copyState(0, h))
	p("Secondary copy: offset %d, %s\n", h.Copies[1].Offset, copyState(1, h))
	p("\nData segments:\n")
	for _, id := range sorted(m.Segments) {
		s := m.Segments[id]
		p("  %d: %s\n", id, clean(s.Type))
		p("\toffset: %d [bytes]\n", s.Offset)
		if s.Dynamic {
			p("\tlength: (whole device)\n")
		} else {
			p("\tlength: %d [bytes]\n", s.Size)
		}
		if s.Encryption != "" {
			p("\tcipher: %s\n", clean(s.Encryption))
			p("\tsector: %d [bytes]\n", s.SectorSize)
		}
		if s.Integrity != nil {
			p("\tintegrity: %s\n", clean(s.Integrity.Type))
			if s.Integrity.KeySize != 0 {
				p("\tintegrity key size: %d [bits]\n", s.Integrity.KeySize*8)
			}
		}
		if len(s.Flags) > 0 {
			p("\tflags : %s\n", clean(strings.Join(s.Flags, ", ")))
		}
	}
	p("\nKeyslots:\n")
	for _, id := range sorted(m.Keyslots) {
		k := m.Keyslots[id]
		p("  %d: %s\n", id, clean(k.Type))
		p("\tKey:        %d bits\n", k.KeySize*8)
		p("\tPriority:   %s\n", k.Priority)
		if k.Type == luks2.KeyslotTypeLUKS2 {
			p("\tCipher:     %s\n", clean(k.Area.Encryption))
			p("\tCipher key: %d bits\n", k.Area.KeySize*8)
			p("\tPBKDF:      %s\n", clean(k.KDF.Type))
			if k.KDF.Type == luks2.KDFPBKDF2 {
				p("\tHash:       %s\n", clean(k.KDF.Hash))
				p("\tIterations: %d\n", k.KDF.Iterations)
			} else {
				p("\tTime cost:  %d\n", k.KDF.Time)
				p("\tMemory:     %d\n", k.KDF.Memory)
				p("\tThreads:    %d\n", k.KDF.CPUs)
			}
			p("\tAF stripes: %d\n", k.AF.Stripes)
			p("\tAF hash:    %s\n", clean(k.AF.Hash))
		}
		p("\tArea offset:%d [bytes]\n", k.Area.Offset)
		p("\tArea length:%d [bytes]\n", k.Area.Size)
		for _, did := range sorted(m.Digests) {
			for _, ks := range m.Digests[did].Keyslots {
				if ks == id {
					p("\tDigest ID:  %d\n", did)
				}
			}
		}
	}
	p("Tokens:\n")
	for _, id := range sorted(m.Tokens) {
		t := m.Tokens[id]
		p("  %d: %s\n", id, clean(t.Type))
		for _, ks := range t.Keyslots {
			p("\tKeyslot:    %d\n", ks)
		}
	}
	p("Digests:\n")
	for _, id := range sorted(m.Digests) {
		d := m.Digests[id]
		p("  %d: %s\n", id, clean(d.Type))
		if d.Type == "pbkdf2" {
			p("\tHash:       %s\n", clean(d.Hash))
			p("\tIterations: %d\n", d.Iterations)
		}
		p("\tKeyslots:   %s\n", orNone(idList(d.Keyslots), "(none)"))
		p("\tSegments:   %s\n", orNone(idList(d.Segments), "(none)"))
	}
}
