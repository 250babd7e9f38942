// Package veritycli implements `cvmboot verity`: building, checking and
// inspecting dm-verity hash devices with pkg/verity, in the format
// veritysetup uses.
//
// Main receives the arguments after "verity", starting with the subcommand
// (format, verify or dump).
package veritycli

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
	"github.com/cvmboot/cvmboot/pkg/verity"
)

// Exit codes (cmdkit's): 1 is a verification that failed (corrupted block or superblock).
const (
	ExitOK     = cmdkit.ExitOK
	ExitFailed = cmdkit.ExitFailed
	ExitUsage  = cmdkit.ExitUsage
	ExitIO     = cmdkit.ExitIO
)

const exitHelp = `Exit status: 0 success, 1 verification failed (corrupted data, hash tree or
superblock), 2 usage error (bad option or parameter), 3 I/O error.
`

const mainUsage = `Usage: cvmboot verity COMMAND [options]

Build and check dm-verity hash devices in the on-disk format of veritysetup.

Commands:
  format DATA HASH             write the hash tree of DATA to HASH, print the root hash
  verify DATA HASH ROOTHASH    check DATA and HASH against ROOTHASH
  dump HASH                    print the superblock of HASH

Run 'cvmboot verity COMMAND --help' for the options of a command.

` + exitHelp

const paramOptions = `  --hash ALG              digest algorithm: sha256 (default), sha512, sha384, sha224, sha1
  --format 0|1            hash type: 1 (default) or 0 for the original Chrome OS format
  --data-block-size N     data block size in bytes, power of two 512..524288 (default 4096)
  --hash-block-size N     hash block size in bytes, power of two 512..524288 (default 4096)
  --data-blocks N         data blocks covered (default: every whole block of DATA)
  --salt HEX|-            salt in hex, at most 256 bytes; - for none
  --uuid UUID             UUID stored in the superblock
  --no-superblock         no superblock on the hash device
  --hash-offset N         byte offset of the verity area on HASH, multiple of 512 (default 0)
  --json                  print the result as JSON
`

const formatUsage = `Usage: cvmboot verity format DATA HASH [options]

Compute the hash tree of DATA and write it to HASH (created if missing, not
truncated), byte for byte as 'veritysetup format' does, then print the root
hash. HASH may be DATA itself when --hash-offset is past the data.

Options:
` + paramOptions + `
Defaults not shared with verify: --salt is 32 random bytes, --uuid is random.
With --json the output lists every parameter, the root hash and the hash area
size (hash_device_size is the smallest HASH that holds the verity area).

` + exitHelp

const verifyUsage = `Usage: cvmboot verity verify DATA HASH ROOTHASH [options]

Check every data block and hash block against ROOTHASH, like
'veritysetup verify'. Prints "verified", or names the first corrupted block:
the superblock first, then the hash tree from the top down, then the lowest
corrupted data block.

With a superblock (the default) the parameters are read from it; options that
are given explicitly must agree with it, else verification fails. With
--no-superblock the parameters come from the options and --salt is required.

Options:
` + paramOptions + `
` + exitHelp

const dumpUsage = `Usage: cvmboot verity dump HASH [options]

Print the verity superblock of HASH in the layout of 'veritysetup dump'.

Options:
  --hash-offset N         byte offset of the superblock on HASH (default 0)
  --json                  print the fields as JSON

` + exitHelp

// Main runs the verity command with args (the subcommand first) and returns
// the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	const prog = "cvmboot verity"
	return cmdkit.Dispatch(prog, mainUsage, []cmdkit.Sub{
		cmdkit.NewSub(prog, "format", formatUsage, func(c cmdkit.Cmd, args []string) int { return (&command{c}).format(args) }),
		cmdkit.NewSub(prog, "verify", verifyUsage, func(c cmdkit.Cmd, args []string) int { return (&command{c}).verify(args) }),
		cmdkit.NewSub(prog, "dump", dumpUsage, func(c cmdkit.Cmd, args []string) int { return (&command{c}).dump(args) }),
	}, args, stdout, stderr)
}

type command struct{ cmdkit.Cmd }

// paramFlags are the options describing verity parameters.
type paramFlags struct {
	fs            *flag.FlagSet
	hash          string
	hashType      uint
	dataBlockSize uint
	hashBlockSize uint
	dataBlocks    uint64
	salt          string
	uuid          string
	noSuperblock  bool
	hashOffset    uint64
	json          bool
}

func newParamFlags(name string) *paramFlags {
	f := &paramFlags{fs: cmdkit.NewFlagSet(name)}
	fs := f.fs
	fs.StringVar(&f.hash, "hash", "sha256", "")
	fs.UintVar(&f.hashType, "format", 1, "")
	fs.UintVar(&f.dataBlockSize, "data-block-size", 4096, "")
	fs.UintVar(&f.hashBlockSize, "hash-block-size", 4096, "")
	fs.Uint64Var(&f.dataBlocks, "data-blocks", 0, "")
	fs.StringVar(&f.salt, "salt", "", "")
	fs.StringVar(&f.uuid, "uuid", "", "")
	fs.BoolVar(&f.noSuperblock, "no-superblock", false, "")
	fs.Uint64Var(&f.hashOffset, "hash-offset", 0, "")
	fs.BoolVar(&f.json, "json", false, "")
	return f
}

// set reports which flags were given on the command line.
func set(fs *flag.FlagSet) map[string]bool {
	m := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { m[f.Name] = true })
	return m
}

// params builds verity parameters from the flags (no random defaults).
func (f *paramFlags) params() (verity.Params, error) {
	p := verity.Params{
		HashType:      uint32(min(f.hashType, 1<<31)),
		Algorithm:     strings.ToLower(f.hash),
		DataBlockSize: uint32(min(f.dataBlockSize, 1<<31)),
		HashBlockSize: uint32(min(f.hashBlockSize, 1<<31)),
		DataBlocks:    f.dataBlocks,
		NoSuperblock:  f.noSuperblock,
		HashOffset:    f.hashOffset,
	}
	if f.salt != "-" && f.salt != "" {
		s, err := hex.DecodeString(f.salt)
		if err != nil {
			return p, fmt.Errorf("--salt %q: expected hexadecimal bytes or -: %v", f.salt, err)
		}
		p.Salt = s
	}
	if f.uuid != "" {
		u, err := verity.ParseUUID(f.uuid)
		if err != nil {
			return p, err
		}
		p.UUID = u
	}
	return p, nil
}

// deviceSize returns the size of a regular file or block device.
func deviceSize(f *os.File) (int64, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("%s: finding the size: %w", f.Name(), err)
	}
	return size, nil
}

// report is the JSON output of format, verify and dump.
type report struct {
	Verified       *bool  `json:"verified,omitempty"`
	Error          string `json:"error,omitempty"`
	RootHash       string `json:"root_hash,omitempty"`
	HashType       uint32 `json:"hash_type"`
	Algorithm      string `json:"algorithm"`
	DataBlockSize  uint32 `json:"data_block_size"`
	HashBlockSize  uint32 `json:"hash_block_size"`
	DataBlocks     uint64 `json:"data_blocks"`
	DataSize       uint64 `json:"data_size"`
	Salt           string `json:"salt"`
	UUID           string `json:"uuid,omitempty"`
	Superblock     bool   `json:"superblock"`
	HashOffset     uint64 `json:"hash_offset"`
	HashStartBlock uint64 `json:"hash_start_block"`
	HashBlocks     uint64 `json:"hash_blocks"`
	Levels         int    `json:"levels"`
	HashAreaSize   uint64 `json:"hash_area_size"`
	HashDeviceSize uint64 `json:"hash_device_size"`
	// Corruption details when verification failed.
	Corruption *verity.CorruptionError `json:"corruption,omitempty"`
}

func newReport(p verity.Params, g verity.Geometry) *report {
	r := &report{
		HashType: p.HashType, Algorithm: p.Algorithm, DataBlockSize: p.DataBlockSize, HashBlockSize: p.HashBlockSize,
		DataBlocks: p.DataBlocks, DataSize: p.DataBlocks * uint64(p.DataBlockSize), Salt: hex.EncodeToString(p.Salt),
		Superblock: !p.NoSuperblock, HashOffset: p.HashOffset, HashStartBlock: g.HashStartBlock, HashBlocks: g.HashBlocks,
		Levels: len(g.Levels), HashDeviceSize: g.HashEnd,
	}
	if !p.NoSuperblock {
		r.UUID = verity.FormatUUID(p.UUID)
	}
	r.HashAreaSize, _ = verity.HashAreaSize(p)
	return r
}

func (c *command) printJSON(v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintf(c.Stdout, "%s\n", b)
}

func (c *command) format(args []string) int {
	f := newParamFlags(c.Name)
	pos, code, ok := c.Parse(f.fs, args, 2)
	if !ok {
		return code
	}
	given := set(f.fs)
	dataPath, hashPath := pos[0], pos[1]
	p, err := f.params()
	if err != nil {
		return c.Fail(ExitUsage, "%v", err)
	}
	if !given["salt"] {
		p.Salt = make([]byte, 32)
		if _, err := rand.Read(p.Salt); err != nil {
			return c.Fail(ExitIO, "generating the salt: %v", err)
		}
	}
	if !given["uuid"] && !p.NoSuperblock {
		if p.UUID, err = verity.RandomUUID(); err != nil {
			return c.Fail(ExitIO, "generating the UUID: %v", err)
		}
	}

	data, err := os.Open(dataPath)
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	defer data.Close()
	dataSize, err := deviceSize(data)
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	if p.DataBlocks == 0 && p.DataBlockSize != 0 {
		p.DataBlocks = uint64(dataSize) / uint64(p.DataBlockSize)
		if p.DataBlocks == 0 {
			return c.Fail(ExitUsage, "%s is %d bytes: expected at least one %d-byte data block", dataPath, dataSize, p.DataBlockSize)
		}
	}
	g, err := p.Geometry()
	if err != nil {
		return c.Fail(ExitUsage, "%v", err)
	}
	if need := p.DataBlocks * uint64(p.DataBlockSize); need > uint64(dataSize) {
		return c.Fail(ExitUsage, "%s is %d bytes: --data-blocks %d of %d bytes need %d", dataPath, dataSize, p.DataBlocks, p.DataBlockSize, need)
	}
	c.warnPageSize(p)

	hash, err := os.OpenFile(hashPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	defer hash.Close()
	if code, ok := c.checkHashDevice(data, hash, p, g); !ok {
		return code
	}

	bar := c.progress("format", int64(p.DataBlocks*uint64(p.DataBlockSize)))
	p.Progress = bar.update
	root, err := verity.Format(data, dataSize, hash, p)
	bar.finish()
	if err != nil {
		return c.Fail(ExitIO, "%s: %v", hashPath, err)
	}
	if err := hash.Sync(); err != nil {
		return c.Fail(ExitIO, "syncing %s: %v", hashPath, err)
	}
	if err := hash.Close(); err != nil {
		return c.Fail(ExitIO, "closing %s: %v", hashPath, err)
	}
	if f.json {
		r := newReport(p, g)
		r.RootHash = hex.EncodeToString(root)
		c.printJSON(r)
	} else {
		fmt.Fprintln(c.Stdout, hex.EncodeToString(root))
	}
	return ExitOK
}

// checkHashDevice refuses a hash area overlapping the data on the same file
// and a block device too small for the hash area (a file grows instead).
func (c *command) checkHashDevice(data, hash *os.File, p verity.Params, g verity.Geometry) (int, bool) {
	ds, err1 := data.Stat()
	hs, err2 := hash.Stat()
	if err := errors.Join(err1, err2); err != nil {
		return c.Fail(ExitIO, "%v", err), false
	}
	if os.SameFile(ds, hs) && p.DataBlocks*uint64(p.DataBlockSize) > p.HashOffset {
		return c.Fail(ExitUsage, "%s: data area (%d bytes) overlaps the hash area at --hash-offset %d",
			hash.Name(), p.DataBlocks*uint64(p.DataBlockSize), p.HashOffset), false
	}
	if hs.Mode()&os.ModeDevice != 0 {
		size, err := deviceSize(hash)
		if err != nil {
			return c.Fail(ExitIO, "%v", err), false
		}
		if uint64(size) < g.HashEnd {
			return c.Fail(ExitUsage, "%s is %d bytes: the verity area needs %d bytes (up to offset %d)",
				hash.Name(), size, g.HashEnd-min(g.HashEnd, p.HashOffset), g.HashEnd), false
		}
	}
	return 0, true
}

func (c *command) warnPageSize(p verity.Params) {
	for _, bs := range []uint32{p.DataBlockSize, p.HashBlockSize} {
		if !verity.KernelBlockSizeOK(bs) {
			fmt.Fprintf(c.Stderr, "%s: warning: block size %d is larger than the page size (%d): the kernel cannot activate this device\n",
				c.Name, bs, os.Getpagesize())
			return
		}
	}
}

func (c *command) verify(args []string) int {
	f := newParamFlags(c.Name)
	pos, code, ok := c.Parse(f.fs, args, 3)
	if !ok {
		return code
	}
	given := set(f.fs)
	dataPath, hashPath, rootHex := pos[0], pos[1], pos[2]
	want, err := f.params()
	if err != nil {
		return c.Fail(ExitUsage, "%v", err)
	}
	root, err := hex.DecodeString(rootHex)
	if err != nil {
		return c.Fail(ExitUsage, "root hash %q: expected hexadecimal digits: %v", rootHex, err)
	}
	if want.NoSuperblock && !given["salt"] {
		return c.Fail(ExitUsage, "--no-superblock needs --salt (--salt - for none)")
	}

	data, err := os.Open(dataPath)
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	defer data.Close()
	hash, err := os.Open(hashPath)
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	defer hash.Close()
	dataSize, err := deviceSize(data)
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}

	p := want
	if !p.NoSuperblock {
		sb, err := verity.ReadSuperblock(hash, p.HashOffset)
		var se *verity.SuperblockError
		switch {
		case errors.Is(err, verity.ErrNoSuperblock):
			return c.Fail(ExitFailed, "%s: no verity superblock at offset %d (use --no-superblock for a hash device without one)", hashPath, p.HashOffset)
		case errors.As(err, &se):
			return c.Fail(ExitFailed, "%s: %v", hashPath, err)
		case err != nil:
			return c.Fail(ExitIO, "%s: %v", hashPath, err)
		}
		p = sb.Params(p.HashOffset)
		if code, ok := c.checkGiven(hashPath, given, want, p); !ok {
			return code
		}
	} else if p.DataBlocks == 0 && p.DataBlockSize != 0 {
		p.DataBlocks = uint64(dataSize) / uint64(p.DataBlockSize)
	}
	g, err := p.Geometry()
	if err != nil {
		return c.Fail(ExitUsage, "%v", err)
	}
	if len(root) != g.DigestSize {
		return c.Fail(ExitUsage, "root hash %s is %d bytes: expected %d for %s", rootHex, len(root), g.DigestSize, p.Algorithm)
	}
	if need := p.DataBlocks * uint64(p.DataBlockSize); need > uint64(dataSize) {
		return c.Fail(ExitFailed, "%s is %d bytes: expected at least %d (%d blocks of %d bytes)", dataPath, dataSize, need, p.DataBlocks, p.DataBlockSize)
	}

	bar := c.progress("verify", int64(p.DataBlocks*uint64(p.DataBlockSize)))
	p.Progress = bar.update
	err = verity.Verify(data, dataSize, hash, root, p)
	bar.finish()
	var ce *verity.CorruptionError
	if err != nil && !errors.As(err, &ce) {
		return c.Fail(ExitIO, "%v", err)
	}
	if f.json {
		r := newReport(p, g)
		r.RootHash = hex.EncodeToString(root)
		verified := err == nil
		r.Verified = &verified
		if ce != nil {
			r.Error = ce.Error()
			r.Corruption = ce
		}
		c.printJSON(r)
	}
	if ce != nil {
		where := hashPath
		if ce.Area == verity.AreaData {
			where = dataPath
		}
		return c.Fail(ExitFailed, "%s: %v", where, ce)
	}
	if !f.json {
		fmt.Fprintln(c.Stdout, "verified")
	}
	return ExitOK
}

// checkGiven compares options given explicitly with the superblock's
// values: a difference is a verification failure, as the hash device does
// not describe what the caller expects.
func (c *command) checkGiven(hashPath string, given map[string]bool, want, sb verity.Params) (int, bool) {
	type check struct {
		flag, field     string
		differ          bool
		expected, found any
	}
	checks := []check{
		{"hash", "algorithm", want.Algorithm != sb.Algorithm, want.Algorithm, sb.Algorithm},
		{"format", "hash_type", want.HashType != sb.HashType, want.HashType, sb.HashType},
		{"data-block-size", "data_block_size", want.DataBlockSize != sb.DataBlockSize, want.DataBlockSize, sb.DataBlockSize},
		{"hash-block-size", "hash_block_size", want.HashBlockSize != sb.HashBlockSize, want.HashBlockSize, sb.HashBlockSize},
		{"data-blocks", "data_blocks", want.DataBlocks != sb.DataBlocks, want.DataBlocks, sb.DataBlocks},
		{"salt", "salt", hex.EncodeToString(want.Salt) != hex.EncodeToString(sb.Salt), saltString(want.Salt), saltString(sb.Salt)},
		{"uuid", "uuid", want.UUID != sb.UUID, verity.FormatUUID(want.UUID), verity.FormatUUID(sb.UUID)},
	}
	for _, ch := range checks {
		if given[ch.flag] && ch.differ {
			return c.Fail(ExitFailed, "%s: superblock field %s is %v, expected %v (--%s)", hashPath, ch.field, ch.found, ch.expected, ch.flag), false
		}
	}
	return 0, true
}

func saltString(s []byte) string {
	if len(s) == 0 {
		return "-"
	}
	return hex.EncodeToString(s)
}

func (c *command) dump(args []string) int {
	fs := cmdkit.NewFlagSet(c.Name)
	offset := fs.Uint64("hash-offset", 0, "")
	asJSON := fs.Bool("json", false, "")
	pos, code, ok := c.Parse(fs, args, 1)
	if !ok {
		return code
	}
	hashPath := pos[0]
	hash, err := os.Open(hashPath)
	if err != nil {
		return c.Fail(ExitIO, "%v", err)
	}
	defer hash.Close()
	sb, err := verity.ReadSuperblock(hash, *offset)
	var se *verity.SuperblockError
	switch {
	case errors.Is(err, verity.ErrNoSuperblock):
		return c.Fail(ExitFailed, "%s: no verity superblock at offset %d", hashPath, *offset)
	case errors.As(err, &se):
		return c.Fail(ExitFailed, "%s: %v", hashPath, err)
	case err != nil:
		return c.Fail(ExitIO, "%s: %v", hashPath, err)
	}
	p := sb.Params(*offset)
	g, err := p.Geometry()
	if err != nil {
		return c.Fail(ExitFailed, "%s: superblock describes an impossible tree: %v", hashPath, err)
	}
	if *asJSON {
		c.printJSON(newReport(p, g))
		return ExitOK
	}
	// Same labels and tabs as `veritysetup dump`.
	w := c.Stdout
	fmt.Fprintf(w, "VERITY header information for %s\n", hashPath)
	fmt.Fprintf(w, "UUID:            \t%s\n", verity.FormatUUID(p.UUID))
	fmt.Fprintf(w, "Hash type:       \t%d\n", p.HashType)
	fmt.Fprintf(w, "Data blocks:     \t%d\n", p.DataBlocks)
	fmt.Fprintf(w, "Data block size: \t%d\n", p.DataBlockSize)
	fmt.Fprintf(w, "Hash blocks:     \t%d\n", g.HashBlocks)
	fmt.Fprintf(w, "Hash block size: \t%d\n", p.HashBlockSize)
	fmt.Fprintf(w, "Hash algorithm:  \t%s\n", p.Algorithm)
	fmt.Fprintf(w, "Salt:            \t%s\n", saltString(p.Salt))
	if *offset == 0 {
		// veritysetup prints the size only when the area starts at 0.
		fmt.Fprintf(w, "Hash device size: \t%d [bytes]\n", g.HashEnd)
	}
	return ExitOK
}
