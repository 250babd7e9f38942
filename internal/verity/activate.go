// Package verity activates dm-verity volumes the way systemd-veritysetup does, from the
// kernel command line to a read-only /dev/mapper/NAME, for a boot agent without udev:
//
//   - ParseCmdline reads roothash=, usrhash=, systemd.verity= and the
//     systemd.verity_{root,usr}_{data,hash,options}= parameters.
//   - Activate finds the data and hash devices (named, by the PARTUUIDs the root hash
//     gives, or by the Discoverable Partitions Specification's type GUIDs), reads the
//     hash device's superblock, checks both devices against the root hash in user space,
//     builds the dm-verity table, loads it read-only and checks the live device.
//
// Everything that touches the machine is an interface (DeviceMapper, Devices, Keyring,
// Options.Open), so the whole activation runs in tests with fakes.
package verity

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/efivar"
	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

// DeviceMapper is what activation needs from device-mapper; *dm.Control implements it.
type DeviceMapper interface {
	// CreateAndLoad creates name, loads targets, resumes it and creates its node below
	// /dev/mapper; on failure nothing is left behind.
	CreateAndLoad(name, uuid string, targets []dm.Target, readOnly bool) (dm.Device, error)
	Status(name string) ([]dm.TargetStatus, error)
	Remove(name string) error
}

// Devices finds block devices; *blockdev.Scanner implements it.
type Devices interface {
	// Wait returns the device spec names once it exists (its node created).
	Wait(ctx context.Context, spec string, timeout time.Duration) (*blockdev.Device, error)
	// Scan lists the block devices present now, with their GPT identities.
	Scan() ([]*blockdev.Device, error)
	// EnsureNode creates a scanned device's node when devtmpfs did not.
	EnsureNode(d *blockdev.Device) error
}

// Keyring holds the root hash signature while dm-verity's constructor looks it up.
type Keyring interface {
	// AddUserKey adds a key of type "user" and returns its serial.
	AddUserKey(desc string, payload []byte) (int, error)
	// Unlink removes the key again.
	Unlink(id int) error
}

// File is an opened device (or, in tests, a regular file).
type File interface {
	io.ReaderAt
	io.Closer
	Size() (int64, error)
}

// Options is what Activate needs.
type Options struct {
	// Volume is the volume to activate, from ParseCmdline (Root or Usr).
	Volume *Volume
	// OnCorruption is the config's verity.on_corruption, used when the volume's options
	// name no corruption handling; empty means panic.
	OnCorruption config.CorruptionAction
	// Debug is the config's debug.enabled: required for ignore-corruption and
	// check-at-most-once, which let modified blocks through.
	Debug bool
	// Timeout bounds the wait for each device (the config's devices.timeout); 0 waits
	// until ctx ends.
	Timeout time.Duration
	DM      DeviceMapper
	Devices Devices
	Log     *zap.Logger

	// Keyring receives a root hash signature; the kernel's session keyring when nil.
	Keyring Keyring
	// Open opens a device for reading; os.Open when nil.
	Open func(path string) (File, error)
	// ReadFile reads root-hash-signature=PATH; os.ReadFile when nil.
	ReadFile func(path string) ([]byte, error)
	// DevDir is where the mapped device's node is ("/dev" when empty).
	DevDir string
	// EFIVarsDir is efivarfs, for LoaderDevicePartUUID ("/sys/firmware/efi/efivars").
	EFIVarsDir string
	// PollInterval is how often devices are rescanned while discovering (250 ms).
	PollInterval time.Duration
}

// Result describes an active verity volume.
type Result struct {
	Name       string // dm name: "root" or "usr"
	DevicePath string // /dev/mapper/NAME
	DataDevice string
	HashDevice string
	RootHash   string // hex
	Table      string // the table line loaded
	// HashAlgorithm is the tree's hash ("sha256"), OnCorruption what dm-verity does on a
	// bad block ("panic", "restart", "ignore", "eio"): measured with the root hash.
	HashAlgorithm string
	OnCorruption  string
	// Facts are for the boot report: devices and how they were found, the format, the
	// corruption policy and its source, the signature, the checks done.
	Facts map[string]string
}

// Activate activates opts.Volume. It refuses, with an error naming the device, the
// expected and the found value, when a device is missing, too small, or does not match
// the root hash, before any device-mapper device exists; and when the live device does
// not read back verified block 0, in which case it removes it again.
func Activate(ctx context.Context, opts Options) (*Result, error) {
	a, err := newActivation(opts)
	if err != nil {
		return nil, err
	}
	return a.run(ctx)
}

type activation struct {
	Options
	vol      *Volume
	log      *zap.Logger
	rootWhat string // the root hash's parameter, for messages
	facts    map[string]string
	checked  map[string]error // discovery: pairs already checked, by "data|hash"
	// bootDiskSaid: the boot disk (or why it is unknown) was logged once.
	bootDiskSaid bool
}

func newActivation(o Options) (*activation, error) {
	switch {
	case o.Volume == nil:
		return nil, errors.New("verity: no volume to activate")
	case o.DM == nil:
		return nil, errors.New("verity: no device-mapper given")
	case o.Devices == nil:
		return nil, errors.New("verity: no block device finder given")
	case len(o.Volume.RootHash) == 0:
		return nil, fmt.Errorf("verity %s: empty root hash", o.Volume.Name)
	}
	a := &activation{Options: o, vol: o.Volume, log: o.Log, facts: map[string]string{}, checked: map[string]error{}}
	if a.log == nil {
		a.log = zap.NewNop()
	}
	a.log = a.log.With(zap.String("volume", o.Volume.Name))
	if a.Keyring == nil {
		a.Keyring = SessionKeyring{}
	}
	if a.Open == nil {
		a.Open = openFile
	}
	if a.ReadFile == nil {
		a.ReadFile = os.ReadFile
	}
	if a.DevDir == "" {
		a.DevDir = "/dev"
	}
	if a.EFIVarsDir == "" {
		a.EFIVarsDir = efivar.Dir
	}
	if a.PollInterval <= 0 {
		a.PollInterval = 250 * time.Millisecond
	}
	param := o.Volume.Params["hash"]
	if param == "" {
		param = "root hash"
	}
	a.rootWhat = fmt.Sprintf("%s=%s", param, shortHex(o.Volume.RootHash))
	return a, nil
}

func shortHex(b []byte) string {
	s := hex.EncodeToString(b)
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

// osFile adapts *os.File: Size seeks to the end, which works for block devices too.
type osFile struct{ *os.File }

func (f osFile) Size() (int64, error) { return f.Seek(0, io.SeekEnd) }

func openFile(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// policy decides the corruption handling: the volume's options when they name one, else
// the config. ignore-corruption and check-at-most-once need debug.enabled.
func (a *activation) policy() (CorruptionMode, string, error) {
	o := a.vol.Options
	mode, source := o.Corruption(), a.vol.Params["options"]
	if mode == CorruptionEIO {
		source = "config verity.on_corruption"
		switch a.OnCorruption {
		case config.CorruptionPanic, "":
			mode = CorruptionPanic
		case config.CorruptionRestart:
			mode = CorruptionRestart
		case config.CorruptionIgnore:
			mode = CorruptionIgnore
		default:
			return "", "", fmt.Errorf("verity.on_corruption %q: expected panic, restart or ignore", a.OnCorruption)
		}
	} else if want := string(a.OnCorruption); want != "" && want != string(mode) {
		a.log.Warn("verity options override the configured corruption policy",
			zap.String("options", source), zap.String("mode", mode.String()), zap.String("config", want))
	}
	if mode == CorruptionIgnore && !a.Debug {
		return "", "", fmt.Errorf("verity %s: ignore-corruption (from %s) lets modified blocks through and requires debug.enabled: true in the cvmboot config", a.vol.Name, source)
	}
	if o.CheckAtMostOnce && !a.Debug {
		return "", "", fmt.Errorf("verity %s: check-at-most-once (from %s) lets the disk change a block after its first verified read and requires debug.enabled: true in the cvmboot config", a.vol.Name, a.vol.Params["options"])
	}
	return mode, source, nil
}

// pair is a data and hash device checked against the root hash.
type pair struct {
	data, hash         *blockdev.Device
	dataSrc, hashSrc   string // "command line", "partuuid", "gpt-type"
	params             pverity.Params
	geo                pverity.Geometry
	sb                 *pverity.Superblock
	dataSize, hashSize int64
}

func (a *activation) run(ctx context.Context) (*Result, error) {
	mode, modeSource, err := a.policy()
	if err != nil {
		return nil, err
	}
	p, err := a.locate(ctx)
	if err != nil {
		return nil, err
	}
	a.log.Info("verity devices checked against the root hash",
		zap.String("data", p.data.Path), zap.String("data_source", p.dataSrc),
		zap.String("hash", p.hash.Path), zap.String("hash_source", p.hashSrc))
	o := a.vol.Options
	t := &Table{
		HashType: p.params.HashType, DataDevice: p.data.Path, HashDevice: p.hash.Path,
		DataBlockSize: p.params.DataBlockSize, HashBlockSize: p.params.HashBlockSize,
		DataBlocks: p.params.DataBlocks, HashStartBlock: p.geo.HashStartBlock,
		Algorithm: p.params.Algorithm, RootHash: a.vol.RootHash, Salt: p.params.Salt,
		Corruption: mode, IgnoreZeroBlocks: o.IgnoreZeroBlocks, CheckAtMostOnce: o.CheckAtMostOnce,
	}
	if o.FECDevice != "" {
		if t.FEC, err = a.fec(ctx, p); err != nil {
			return nil, err
		}
	}
	sig, sigSource, err := a.signature(p)
	if err != nil {
		return nil, err
	}
	dmUUID := "CRYPT-VERITY-" + a.vol.Name
	if u := a.verityUUID(p); u != "" {
		dmUUID = "CRYPT-VERITY-" + strings.ReplaceAll(u, "-", "") + "-" + a.vol.Name
	}

	dev, err := a.load(t, dmUUID, sig)
	if err != nil {
		return nil, err
	}
	devPath := dm.NodePath(a.DevDir, a.vol.Name)
	status, err := a.checkLive(devPath, p)
	if err != nil {
		if rerr := a.DM.Remove(a.vol.Name); rerr != nil {
			err = errors.Join(err, fmt.Errorf("removing %s again: %w", a.vol.Name, rerr))
		}
		return nil, err
	}

	f := a.facts
	f["device"] = devPath
	f["dm_device"] = dev.ID()
	f["dm_uuid"] = dmUUID
	f["data_device"], f["data_source"] = p.data.Path, p.dataSrc
	f["hash_device"], f["hash_source"] = p.hash.Path, p.hashSrc
	f["root_hash"] = hex.EncodeToString(a.vol.RootHash)
	f["algorithm"] = p.params.Algorithm
	f["hash_type"] = strconv.FormatUint(uint64(p.params.HashType), 10)
	f["data_blocks"] = strconv.FormatUint(p.params.DataBlocks, 10)
	f["data_block_size"] = strconv.FormatUint(uint64(p.params.DataBlockSize), 10)
	f["hash_block_size"] = strconv.FormatUint(uint64(p.params.HashBlockSize), 10)
	f["hash_start_block"] = strconv.FormatUint(p.geo.HashStartBlock, 10)
	f["salt"] = hexOrDash(p.params.Salt)
	if p.sb != nil {
		f["superblock"] = "yes"
		f["verity_uuid"] = pverity.FormatUUID(p.sb.UUID)
	} else {
		f["superblock"] = "no"
	}
	f["corruption"] = mode.String()
	f["corruption_source"] = modeSource
	if len(o.Given) > 0 {
		f["options"] = strings.Join(o.Given, ",")
	}
	f["signature"] = sigSource
	if t.FEC != nil {
		f["fec_device"] = t.FEC.Device
	}
	f["checked"] = fmt.Sprintf("root hash to data block 0 (%d tree levels) before activation; block 0 read through %s after", len(p.geo.Levels), devPath)
	f["status"] = status
	f["table"] = t.String()
	return &Result{
		Name: a.vol.Name, DevicePath: devPath, DataDevice: p.data.Path, HashDevice: p.hash.Path,
		RootHash: hex.EncodeToString(a.vol.RootHash), Table: t.String(), Facts: f,
		HashAlgorithm: p.params.Algorithm, OnCorruption: mode.String(),
	}, nil
}

func hexOrDash(b []byte) string {
	if len(b) == 0 {
		return "-"
	}
	return hex.EncodeToString(b)
}

// verityUUID is the volume's uuid as libcryptsetup reports it: the superblock's, or
// uuid= without one.
func (a *activation) verityUUID(p *pair) string {
	if p.sb != nil {
		return pverity.FormatUUID(p.sb.UUID)
	}
	return a.vol.Options.UUID
}

// load creates the device. With a signature, the key must be findable by dm-verity's
// constructor, which runs in DM_TABLE_LOAD on this thread: a session keyring that PID 1
// first touches here is installed for the calling thread only, so the goroutine stays on
// one OS thread from add_key until the key is unlinked again after the load.
func (a *activation) load(t *Table, dmUUID string, sig []byte) (dm.Device, error) {
	if sig != nil {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		desc := "cvmboot:verity:" + a.vol.Name
		id, err := a.Keyring.AddUserKey(desc, sig)
		if err != nil {
			return dm.Device{}, fmt.Errorf("verity %s: adding the root hash signature to the kernel keyring as %q: %w", a.vol.Name, desc, err)
		}
		defer func() {
			if err := a.Keyring.Unlink(id); err != nil {
				a.log.Warn("could not unlink the root hash signature key", zap.Int("key", id), zap.Error(err))
			}
		}()
		t.RootHashSigKeyDesc = desc
	}
	a.log.Info("loading dm-verity table", zap.String("table", t.String()))
	dev, err := a.DM.CreateAndLoad(a.vol.Name, dmUUID, []dm.Target{t.Target()}, true)
	if err != nil {
		if sig != nil && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EBADMSG) || errors.Is(err, unix.EKEYREJECTED) || errors.Is(err, unix.ENOKEY) || errors.Is(err, unix.EKEYEXPIRED)) {
			err = fmt.Errorf("%w (the root hash signature was rejected: not a valid PKCS#7 signature of the root hash by a certificate in the kernel's trusted keyrings, or a kernel without CONFIG_DM_VERITY_VERIFY_ROOTHASH_SIG; the kernel log says which)", err)
		}
		return dm.Device{}, fmt.Errorf("verity %s: %w", a.vol.Name, err)
	}
	return dev, nil
}

// checkLive reads data block 0 through the new device, which makes dm-verity verify it
// against the tree, and requires the status to say valid ("V").
func (a *activation) checkLive(devPath string, p *pair) (string, error) {
	f, err := a.Open(devPath)
	if err != nil {
		return "", fmt.Errorf("verity %s: opening %s to check it: %w", a.vol.Name, devPath, err)
	}
	_, readErr := readBlock(f, 0, p.params.DataBlockSize, "block 0 of "+devPath)
	f.Close()
	st, err := a.DM.Status(a.vol.Name)
	if err != nil {
		return "", fmt.Errorf("verity %s: %w", a.vol.Name, err)
	}
	if len(st) != 1 || st[0].Type != "verity" {
		return "", fmt.Errorf("verity %s: status %v: expected one verity target", a.vol.Name, st)
	}
	status := st[0].Status
	word, _, _ := strings.Cut(status, " ")
	if readErr != nil || word != "V" {
		return "", fmt.Errorf("verity %s: %s failed its check after activation (status %q, expected \"V\"; read: %v): the devices changed after they were checked, or the kernel disagrees with the user-space check", a.vol.Name, devPath, status, readErr)
	}
	return status, nil
}

// fec resolves the FEC device and computes fec_start and fec_blocks as libcryptsetup's
// VERITY_FEC_blocks does, including its units: the hash device's size in data blocks
// minus the hash start block (in hash blocks; FEC requires equal block sizes).
func (a *activation) fec(ctx context.Context, p *pair) (*FEC, error) {
	o := a.vol.Options
	if p.params.DataBlockSize != p.params.HashBlockSize {
		return nil, fmt.Errorf("verity %s: fec-device= needs equal data and hash block sizes, found %d and %d", a.vol.Name, p.params.DataBlockSize, p.params.HashBlockSize)
	}
	fdev, err := a.Devices.Wait(ctx, o.FECDevice, a.Timeout)
	if err != nil {
		return nil, fmt.Errorf("verity %s: FEC device: %w", a.vol.Name, err)
	}
	var blocks uint64
	if fdev.Major == p.hash.Major && fdev.Minor == p.hash.Minor {
		blocks = o.FECOffset
	} else {
		blocks = uint64(p.hashSize)
	}
	blocks /= uint64(p.params.DataBlockSize)
	if blocks > 0 {
		if blocks < p.geo.HashStartBlock {
			return nil, fmt.Errorf("verity %s: FEC area: %d blocks before the hash tree start block %d", a.vol.Name, blocks, p.geo.HashStartBlock)
		}
		blocks -= p.geo.HashStartBlock
	}
	blocks += p.params.DataBlocks
	return &FEC{Device: fdev.Path, Start: o.FECOffset / uint64(p.params.HashBlockSize), Blocks: blocks, Roots: o.FECRoots}, nil
}

// checkPair opens both devices, reads the format (superblock or options), checks sizes
// and the digest chain, and returns the checked pair.
func (a *activation) checkPair(data, hash *blockdev.Device) (*pair, error) {
	if err := a.Devices.EnsureNode(data); err != nil {
		return nil, err
	}
	if err := a.Devices.EnsureNode(hash); err != nil {
		return nil, err
	}
	hf, err := a.Open(hash.Path)
	if err != nil {
		return nil, fmt.Errorf("verity %s: opening hash device: %w", a.vol.Name, err)
	}
	defer hf.Close()
	df, err := a.Open(data.Path)
	if err != nil {
		return nil, fmt.Errorf("verity %s: opening data device: %w", a.vol.Name, err)
	}
	defer df.Close()
	p := &pair{data: data, hash: hash}
	if p.hashSize, err = hf.Size(); err != nil {
		return nil, fmt.Errorf("verity %s: size of hash device %s: %w", a.vol.Name, hash.Path, err)
	}
	if p.dataSize, err = df.Size(); err != nil {
		return nil, fmt.Errorf("verity %s: size of data device %s: %w", a.vol.Name, data.Path, err)
	}
	if err := a.format(p, hf); err != nil {
		return nil, err
	}
	if err := checkChain(p.params, p.geo, a.vol.RootHash, df, hf, data.Path, hash.Path, a.rootWhat, describeSuperblock(p.sb)); err != nil {
		return nil, fmt.Errorf("verity %s: %w", a.vol.Name, err)
	}
	return p, nil
}

// format fills p.params, p.sb and p.geo and checks them against the devices.
func (a *activation) format(p *pair, hf io.ReaderAt) error {
	o := a.vol.Options
	name := a.vol.Name
	if o.Superblock {
		sb, err := pverity.ReadSuperblock(hf, o.HashOffset)
		if err != nil {
			if errors.Is(err, pverity.ErrNoSuperblock) {
				return fmt.Errorf("verity %s: hash device %s has no verity superblock at byte %d (%v): it is not a hash partition, or its format needs superblock=no", name, p.hash.Path, o.HashOffset, err)
			}
			return fmt.Errorf("verity %s: hash device %s: %w", name, p.hash.Path, err)
		}
		p.sb, p.params = sb, sb.Params(o.HashOffset)
	} else {
		if !o.SaltSet {
			return fmt.Errorf("verity %s: superblock=no needs salt= (hex or -): without it veritysetup would use a random salt that cannot match an existing tree", name)
		}
		if _, err := pverity.DigestSize(o.Hash); err != nil {
			return fmt.Errorf("verity %s: hash=: %w", name, err)
		}
		p.params = pverity.DefaultParams()
		p.params.HashType, p.params.Algorithm = o.Format, o.Hash
		p.params.DataBlockSize, p.params.HashBlockSize = o.DataBlockSize, o.HashBlockSize
		p.params.Salt, p.params.NoSuperblock, p.params.HashOffset = o.Salt, true, o.HashOffset
		p.params.DataBlocks = o.DataBlocks
		if p.params.DataBlocks == 0 {
			p.params.DataBlocks = uint64(p.dataSize) / uint64(o.DataBlockSize)
		}
		if p.params.DataBlocks == 0 {
			return fmt.Errorf("verity %s: data device %s is %d bytes: expected at least one %d-byte block", name, p.data.Path, p.dataSize, o.DataBlockSize)
		}
	}
	pp := p.params
	if ds, _ := pverity.DigestSize(pp.Algorithm); ds != len(a.vol.RootHash) {
		return fmt.Errorf("verity %s: %s is %d bytes, but hash device %s uses %s with %d-byte digests", name, a.rootWhat, len(a.vol.RootHash), p.hash.Path, pp.Algorithm, ds)
	}
	for _, bs := range []struct {
		what string
		n    uint32
	}{{"data", pp.DataBlockSize}, {"hash", pp.HashBlockSize}} {
		if !pverity.KernelBlockSizeOK(bs.n) {
			return fmt.Errorf("verity %s: %s block size %d is larger than the page size %d: the kernel cannot activate it", name, bs.what, bs.n, os.Getpagesize())
		}
	}
	g, err := pp.Geometry()
	if err != nil {
		return fmt.Errorf("verity %s: hash device %s: %w", name, p.hash.Path, err)
	}
	p.geo = g
	if need := pp.DataBlocks * uint64(pp.DataBlockSize); uint64(p.dataSize) < need {
		return fmt.Errorf("verity %s: data device %s is %d bytes: expected at least %d (%d blocks of %d bytes)", name, p.data.Path, p.dataSize, need, pp.DataBlocks, pp.DataBlockSize)
	}
	if uint64(p.hashSize) < g.HashEnd {
		return fmt.Errorf("verity %s: hash device %s is %d bytes: expected at least %d to hold the hash tree (%d hash blocks of %d bytes from block %d)", name, p.hash.Path, p.hashSize, g.HashEnd, g.HashBlocks, pp.HashBlockSize, g.HashStartBlock)
	}
	return nil
}
