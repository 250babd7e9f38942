package verity

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/cvmboot/cvmboot/internal/dm"
)

// Table is a dm-verity target (Documentation/admin-guide/device-mapper/verity.rst):
//
//	<version> <data_dev> <hash_dev> <data_block_size> <hash_block_size> <num_data_blocks>
//	<hash_start_block> <algorithm> <root_digest> <salt|-> [<#opt_params> <opt_params>...]
//
// Params writes the optional words in the order libcryptsetup's get_dm_verity_params
// does, so that a table equals the one `veritysetup open` loads for the same volume.
type Table struct {
	HashType       uint32
	DataDevice     string // path or MAJOR:MINOR
	HashDevice     string
	DataBlockSize  uint32
	HashBlockSize  uint32
	DataBlocks     uint64
	HashStartBlock uint64 // in hash blocks
	Algorithm      string
	RootHash       []byte
	Salt           []byte
	Corruption     CorruptionMode
	// OnError is "restart_on_error" or "panic_on_error" (kernel 6.12+): I/O errors are
	// handled like corruption. systemd has no option for it; it is kept so that any table
	// read back from the kernel parses and prints the same.
	OnError            string
	IgnoreZeroBlocks   bool
	CheckAtMostOnce    bool
	TryVerifyInTasklet bool
	FEC                *FEC
	RootHashSigKeyDesc string
}

// FEC is the forward error correction part of a table.
type FEC struct {
	Device string
	Start  uint64 // fec_start, in data blocks
	Blocks uint64 // fec_blocks: data, hash and metadata blocks covered
	Roots  uint32 // fec_roots: parity bytes, 2..24
}

// Sectors is the mapped device's length in 512-byte sectors.
func (t *Table) Sectors() uint64 { return t.DataBlocks * uint64(t.DataBlockSize) / 512 }

// Params returns the target parameters.
func (t *Table) Params() string {
	var opts []string
	if w := t.Corruption.tableOption(); w != "" {
		opts = append(opts, w)
	}
	if t.OnError != "" {
		opts = append(opts, t.OnError)
	}
	if t.IgnoreZeroBlocks {
		opts = append(opts, "ignore_zero_blocks")
	}
	if t.CheckAtMostOnce {
		opts = append(opts, "check_at_most_once")
	}
	if t.TryVerifyInTasklet {
		opts = append(opts, "try_verify_in_tasklet")
	}
	if f := t.FEC; f != nil {
		opts = append(opts, "use_fec_from_device", f.Device, "fec_start", strconv.FormatUint(f.Start, 10),
			"fec_blocks", strconv.FormatUint(f.Blocks, 10), "fec_roots", strconv.FormatUint(uint64(f.Roots), 10))
	}
	if t.RootHashSigKeyDesc != "" {
		opts = append(opts, "root_hash_sig_key_desc", t.RootHashSigKeyDesc)
	}
	salt := "-"
	if len(t.Salt) > 0 {
		salt = hex.EncodeToString(t.Salt)
	}
	s := fmt.Sprintf("%d %s %s %d %d %d %d %s %s %s", t.HashType, t.DataDevice, t.HashDevice,
		t.DataBlockSize, t.HashBlockSize, t.DataBlocks, t.HashStartBlock, t.Algorithm, hex.EncodeToString(t.RootHash), salt)
	if len(opts) > 0 {
		s += " " + strconv.Itoa(len(opts)) + " " + strings.Join(opts, " ")
	}
	return s
}

// Target returns the single-target table of a verity device.
func (t *Table) Target() dm.Target {
	return dm.Target{Start: 0, Length: t.Sectors(), Type: "verity", Params: t.Params()}
}

// String is the table line as `dmsetup table` prints it.
func (t *Table) String() string { return t.Target().String() }

// ParseTable parses verity target parameters, as Params writes them or as the kernel
// prints a live table (devices as MAJOR:MINOR).
func ParseTable(params string) (*Table, error) {
	f := strings.Fields(params)
	if len(f) < 10 {
		return nil, fmt.Errorf("verity table %q: expected at least 10 words, found %d", params, len(f))
	}
	t := &Table{DataDevice: f[1], HashDevice: f[2], Algorithm: f[7]}
	num := func(i int, bits int, what string) (uint64, error) {
		n, err := strconv.ParseUint(f[i], 10, bits)
		if err != nil {
			return 0, fmt.Errorf("verity table word %d (%s) %q: expected a decimal number below 2^%d", i+1, what, f[i], bits)
		}
		return n, nil
	}
	v, err := num(0, 32, "version")
	if err != nil {
		return nil, err
	}
	t.HashType = uint32(v)
	if v, err = num(3, 32, "data block size"); err != nil {
		return nil, err
	}
	t.DataBlockSize = uint32(v)
	if v, err = num(4, 32, "hash block size"); err != nil {
		return nil, err
	}
	t.HashBlockSize = uint32(v)
	if t.DataBlocks, err = num(5, 64, "data blocks"); err != nil {
		return nil, err
	}
	if t.HashStartBlock, err = num(6, 64, "hash start block"); err != nil {
		return nil, err
	}
	if t.RootHash, err = hex.DecodeString(f[8]); err != nil || len(t.RootHash) == 0 {
		return nil, fmt.Errorf("verity table root digest %q: expected hexadecimal", f[8])
	}
	if f[9] != "-" {
		if t.Salt, err = hex.DecodeString(f[9]); err != nil {
			return nil, fmt.Errorf("verity table salt %q: expected hexadecimal or -", f[9])
		}
	}
	if len(f) == 10 {
		return t, nil
	}
	n, err := num(10, 32, "optional parameter count")
	if err != nil {
		return nil, err
	}
	opts := f[11:]
	if uint64(len(opts)) != n {
		return nil, fmt.Errorf("verity table announces %d optional words and has %d", n, len(opts))
	}
	arg := func(i int, what string) (string, error) {
		if i >= len(opts) {
			return "", fmt.Errorf("verity table option %s has no value", what)
		}
		return opts[i], nil
	}
	mode := func(m CorruptionMode) error {
		if t.Corruption != CorruptionEIO {
			return fmt.Errorf("verity table has both %s and %s", t.Corruption.tableOption(), m.tableOption())
		}
		t.Corruption = m
		return nil
	}
	for i := 0; i < len(opts); i++ {
		switch o := opts[i]; o {
		case "ignore_corruption":
			err = mode(CorruptionIgnore)
		case "restart_on_corruption":
			err = mode(CorruptionRestart)
		case "panic_on_corruption":
			err = mode(CorruptionPanic)
		case "restart_on_error", "panic_on_error":
			if t.OnError != "" {
				return nil, fmt.Errorf("verity table has both %s and %s", t.OnError, o)
			}
			t.OnError = o
		case "ignore_zero_blocks":
			t.IgnoreZeroBlocks = true
		case "check_at_most_once":
			t.CheckAtMostOnce = true
		case "try_verify_in_tasklet":
			t.TryVerifyInTasklet = true
		case "use_fec_from_device":
			if i+7 >= len(opts) || opts[i+2] != "fec_start" || opts[i+4] != "fec_blocks" || opts[i+6] != "fec_roots" {
				return nil, fmt.Errorf("verity table: use_fec_from_device must be followed by <dev> fec_start <n> fec_blocks <n> fec_roots <n>")
			}
			fec := &FEC{Device: opts[i+1]}
			var e1, e2, e3 error
			fec.Start, e1 = strconv.ParseUint(opts[i+3], 10, 64)
			fec.Blocks, e2 = strconv.ParseUint(opts[i+5], 10, 64)
			roots, e3 := strconv.ParseUint(opts[i+7], 10, 32)
			if e1 != nil || e2 != nil || e3 != nil {
				return nil, fmt.Errorf("verity table: FEC numbers %q %q %q: expected decimal numbers", opts[i+3], opts[i+5], opts[i+7])
			}
			fec.Roots = uint32(roots)
			t.FEC = fec
			i += 7
		case "fec_start", "fec_blocks", "fec_roots":
			return nil, fmt.Errorf("verity table: %s without use_fec_from_device", o)
		case "root_hash_sig_key_desc":
			if t.RootHashSigKeyDesc, err = arg(i+1, o); err != nil {
				return nil, err
			}
			i++
		default:
			return nil, fmt.Errorf("verity table: unknown optional word %q", o)
		}
		if err != nil {
			return nil, err
		}
	}
	return t, nil
}
