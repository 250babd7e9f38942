// Command dmtest exercises device-mapper and dm-verity activation against a real kernel.
// It runs as root inside the test VM (this package's unit tests cannot: the build host's
// kernel has no device-mapper). It makes a data file and its verity hash tree, attaches
// them to loop devices (or uses -data/-hash), and then creates, checks, lists and removes
// a linear device, a raw verity device, a verity volume activated the way the boot does,
// refuses a wrong root hash, and sees dm-verity catch a corrupted block.
//
// Every check prints one line: "DMTEST: ok <name> <detail>" or "DMTEST: FAIL <name>:
// <reason>", and the run ends with "DMTEST: done pass=N fail=M"; the exit status is 1 when
// anything failed.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/kmod"
	"github.com/cvmboot/cvmboot/internal/verity"
	pverity "github.com/cvmboot/cvmboot/pkg/verity"
)

const prefix = "dmtest-"

type run struct {
	pass, fail int
	ctl        *dm.Control
	dir        string
}

func (r *run) ok(name, format string, args ...any) {
	r.pass++
	fmt.Printf("DMTEST: ok %s %s\n", name, fmt.Sprintf(format, args...))
}

func (r *run) failf(name string, err error) {
	r.fail++
	fmt.Printf("DMTEST: FAIL %s: %v\n", name, err)
}

func main() {
	modules := flag.String("modules", "dm_mod,dm_verity,loop", "kernel modules to load first (comma-separated; empty: none)")
	dataDev := flag.String("data", "", "data block device to use instead of a loop device (its content is overwritten)")
	hashDev := flag.String("hash", "", "hash block device to use instead of a loop device (its content is overwritten)")
	blocks := flag.Int("blocks", 1024, "data blocks of 4096 bytes")
	onCorruption := flag.String("on-corruption", "panic", "policy for the activation test: panic, restart or ignore")
	flag.Parse()

	r := &run{}
	defer func() {
		fmt.Printf("DMTEST: done pass=%d fail=%d\n", r.pass, r.fail)
		if r.fail > 0 {
			os.Exit(1)
		}
	}()
	if *modules != "" {
		loaded, err := (&kmod.Loader{}).LoadNames(context.Background(), strings.Split(*modules, ","))
		if err != nil {
			// Built-in drivers or modules loaded by the caller make this harmless; the
			// device-mapper checks below tell.
			fmt.Printf("DMTEST: note loading modules %s: %v\n", *modules, err)
		} else {
			fmt.Printf("DMTEST: note modules loaded: %v\n", loaded)
		}
	}
	ctl, err := dm.Open()
	if err != nil {
		r.failf("open", err)
		return
	}
	defer ctl.Close()
	r.ctl = ctl
	r.ok("open", "interface %d.%d.%d", ctl.Version[0], ctl.Version[1], ctl.Version[2])

	dir, err := os.MkdirTemp("", "dmtest")
	if err != nil {
		r.failf("setup", err)
		return
	}
	defer os.RemoveAll(dir)
	r.dir = dir
	// The udev database goes to the scratch directory, so the test does not leave entries
	// for devices that no longer exist in the real /run/udev.
	ctl.UdevDir = filepath.Join(dir, "udev")

	vol, err := r.setup(*blocks, *dataDev, *hashDev)
	if err != nil {
		r.failf("setup", err)
		return
	}
	// Devices over the loop devices go first, then the loop devices.
	defer func() {
		r.cleanup()
		vol.detach()
	}()
	r.ok("setup", "data %s, hash %s, %d blocks, root hash %x", vol.data, vol.hash, *blocks, vol.root)

	r.linear(vol)
	r.rawVerity(vol)
	r.activate(vol, config.CorruptionAction(*onCorruption))
	r.wrongRootHash(vol)
	r.signatureKey(vol)
	r.corruption(vol)
	r.list()
}

// volume is the test's backing storage.
type volume struct {
	data, hash string // block devices
	dataFile   string
	content    []byte
	root       []byte
	params     pverity.Params
	detachers  []func()
}

func (v *volume) detach() {
	for i := len(v.detachers) - 1; i >= 0; i-- {
		v.detachers[i]()
	}
}

func deterministic(n int) []byte {
	out := make([]byte, 0, n+32)
	var ctr [8]byte
	for i := uint64(0); len(out) < n; i++ {
		binary.LittleEndian.PutUint64(ctr[:], i)
		h := sha256.Sum256(append([]byte("dmtest"), ctr[:]...))
		out = append(out, h[:]...)
	}
	return out[:n]
}

func (r *run) setup(blocks int, dataDev, hashDev string) (*volume, error) {
	v := &volume{content: deterministic(blocks * 4096), params: pverity.DefaultParams()}
	v.params.Salt = deterministic(32)[:32]
	v.params.UUID = [16]byte{0xd3, 0x7e, 0x57, 0, 0, 0, 0x40, 0, 0x80}
	v.dataFile = filepath.Join(r.dir, "data")
	hashFile := filepath.Join(r.dir, "hash")
	if err := os.WriteFile(v.dataFile, v.content, 0o600); err != nil {
		return nil, err
	}
	hf, err := os.Create(hashFile)
	if err != nil {
		return nil, err
	}
	v.root, err = pverity.Format(bytes.NewReader(v.content), int64(len(v.content)), hf, v.params)
	hf.Close()
	if err != nil {
		return nil, err
	}
	v.params.DataBlocks = uint64(blocks)
	if dataDev != "" && hashDev != "" {
		for _, c := range []struct{ file, dev string }{{v.dataFile, dataDev}, {hashFile, hashDev}} {
			b, err := os.ReadFile(c.file)
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(c.dev, b, 0); err != nil {
				return nil, fmt.Errorf("writing %s: %w", c.dev, err)
			}
		}
		v.data, v.hash = dataDev, hashDev
		return v, nil
	}
	for _, c := range []struct {
		file string
		dev  *string
	}{{v.dataFile, &v.data}, {hashFile, &v.hash}} {
		dev, detach, err := attachLoop(c.file)
		if err != nil {
			return nil, err
		}
		*c.dev = dev
		v.detachers = append(v.detachers, detach)
	}
	return v, nil
}

// attachLoop attaches file read-only to a free loop device.
func attachLoop(file string) (string, func(), error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("loop devices unavailable (pass -data and -hash): %w", err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return "", nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
	}
	path := fmt.Sprintf("/dev/loop%d", n)
	var lf *os.File
	for i := 0; ; i++ { // devtmpfs creates the node as the device is added
		if lf, err = os.OpenFile(path, os.O_RDWR, 0); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return "", nil, err
	}
	bf, err := os.Open(file)
	if err != nil {
		lf.Close()
		return "", nil, err
	}
	defer bf.Close()
	cfg := unix.LoopConfig{Fd: uint32(bf.Fd())}
	cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY
	copy(cfg.Info.File_name[:], file)
	if err := unix.IoctlLoopConfigure(int(lf.Fd()), &cfg); err != nil {
		// Kernels before 5.8 have no LOOP_CONFIGURE.
		if err2 := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_FD, int(bf.Fd())); err2 != nil {
			lf.Close()
			return "", nil, fmt.Errorf("attaching %s to %s: LOOP_CONFIGURE: %v, LOOP_SET_FD: %w", file, path, err, err2)
		}
	}
	return path, func() {
		unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
		lf.Close()
	}, nil
}

func sectors(v *volume) uint64 { return uint64(len(v.content)) / 512 }

// readDevice reads n bytes at off from path.
func readDevice(path string, off int64, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, err
	}
	return b, nil
}

func (r *run) linear(v *volume) {
	name := prefix + "linear"
	d, err := r.ctl.CreateAndLoad(name, "DMTEST-"+name, []dm.Target{{Start: 0, Length: sectors(v), Type: "linear", Params: v.data + " 0"}}, true)
	if err != nil {
		r.failf("linear-create", err)
		return
	}
	r.ok("linear-create", "%s is %s", name, d.ID())
	info, err := r.ctl.Info(name)
	switch {
	case err != nil:
		r.failf("linear-info", err)
	case info.Suspended || !info.ActiveTable || !info.ReadOnly || info.UUID != "DMTEST-"+name:
		r.failf("linear-info", fmt.Errorf("state %+v: expected active, read-only, not suspended, uuid DMTEST-%s", info, name))
	default:
		r.ok("linear-info", "active read-only, open count %d", info.OpenCount)
	}
	if tb, err := r.ctl.Table(name); err != nil {
		r.failf("linear-table", err)
	} else if len(tb) != 1 || tb[0].Type != "linear" || tb[0].Length != sectors(v) || !strings.HasSuffix(tb[0].Params, " 0") {
		r.failf("linear-table", fmt.Errorf("table %v", tb))
	} else {
		r.ok("linear-table", "%s", tb[0])
	}
	node := dm.NodePath(r.ctl.DevDir, name)
	if b, err := readDevice(node, 4096*3, 4096); err != nil {
		r.failf("linear-read", err)
	} else if !bytes.Equal(b, v.content[4096*3:4096*4]) {
		r.failf("linear-read", errors.New("block 3 read through the device differs from the file"))
	} else {
		r.ok("linear-read", "block 3 through %s", node)
	}
	db := filepath.Join(r.ctl.UdevDir, "data", fmt.Sprintf("b%d:%d", d.Major, d.Minor))
	if b, err := os.ReadFile(db); err != nil || !bytes.Contains(b, []byte("E:DM_UDEV_PRIMARY_SOURCE_FLAG=1\n")) || !bytes.Contains(b, []byte("S:mapper/"+name+"\n")) {
		r.failf("linear-udev-db", fmt.Errorf("%s: %q, %v", db, b, err))
	} else {
		r.ok("linear-udev-db", "%s", db)
	}
	if err := r.ctl.Remove(name); err != nil {
		r.failf("linear-remove", err)
		return
	}
	if _, err := r.ctl.Info(name); !errors.Is(err, unix.ENXIO) {
		r.failf("linear-remove", fmt.Errorf("after removal DM_DEV_STATUS says %v, expected ENXIO", err))
	} else if _, err := os.Lstat(node); !errors.Is(err, os.ErrNotExist) {
		r.failf("linear-remove", fmt.Errorf("%s still exists: %v", node, err))
	} else {
		r.ok("linear-remove", "gone, node removed")
	}
}

// table is the verity table for v over the given data device, with opts.
func table(v *volume, data string, mode verity.CorruptionMode) *verity.Table {
	return &verity.Table{
		HashType: 1, DataDevice: data, HashDevice: v.hash, DataBlockSize: 4096, HashBlockSize: 4096,
		DataBlocks: v.params.DataBlocks, HashStartBlock: 1, Algorithm: "sha256", RootHash: v.root, Salt: v.params.Salt,
		Corruption: mode,
	}
}

// rawVerity loads a table built here (EIO on corruption) and reads everything through it.
func (r *run) rawVerity(v *volume) {
	name := prefix + "verity-raw"
	t := table(v, v.data, verity.CorruptionEIO)
	if _, err := r.ctl.CreateAndLoad(name, "", []dm.Target{t.Target()}, true); err != nil {
		r.failf("verity-raw-create", fmt.Errorf("%v (table %s)", err, t))
		return
	}
	defer r.remove(name)
	b, err := readDevice(dm.NodePath(r.ctl.DevDir, name), 0, len(v.content))
	if err != nil || !bytes.Equal(b, v.content) {
		r.failf("verity-raw-read", fmt.Errorf("reading all %d bytes: %v (equal %v)", len(v.content), err, bytes.Equal(b, v.content)))
	} else {
		r.ok("verity-raw-read", "%d bytes verified", len(b))
	}
	r.expectStatus("verity-raw-status", name, "V")
	if tb, err := r.ctl.Table(name); err != nil {
		r.failf("verity-raw-table", err)
	} else if kt, err := verity.ParseTable(tb[0].Params); err != nil {
		r.failf("verity-raw-table", err)
	} else if kt.DataBlocks != t.DataBlocks || !bytes.Equal(kt.RootHash, t.RootHash) || !bytes.Equal(kt.Salt, t.Salt) || kt.HashStartBlock != 1 {
		r.failf("verity-raw-table", fmt.Errorf("kernel table %q differs from %q", tb[0].Params, t.Params()))
	} else {
		r.ok("verity-raw-table", "kernel reads back %s", tb[0])
	}
}

func (r *run) expectStatus(check, name, want string) {
	st, err := r.ctl.Status(name)
	switch {
	case err != nil:
		r.failf(check, err)
	case len(st) != 1 || !strings.HasPrefix(st[0].Status, want):
		r.failf(check, fmt.Errorf("status %v: expected %q", st, want))
	default:
		r.ok(check, "%s", st[0])
	}
}

func (r *run) remove(name string) {
	if err := r.ctl.Remove(name); err != nil {
		r.failf("remove-"+name, err)
	}
}

func (r *run) volume(name string, root []byte, v *volume) *verity.Volume {
	return &verity.Volume{Name: name, RootHash: root, DataSpec: v.data, HashSpec: v.hash, Options: verity.DefaultOptions(),
		Params: map[string]string{"hash": "roothash", "data": "systemd.verity_root_data", "hash device": "systemd.verity_root_hash"}}
}

func (r *run) activateOpts(vol *verity.Volume, policy config.CorruptionAction) verity.Options {
	return verity.Options{
		Volume: vol, OnCorruption: policy, Debug: policy == config.CorruptionIgnore, Timeout: 5 * time.Second,
		DM: r.ctl, Devices: blockdev.NewScanner(nil),
	}
}

// activate runs the boot's activation path over the loop devices.
func (r *run) activate(v *volume, policy config.CorruptionAction) {
	name := prefix + "root"
	res, err := verity.Activate(context.Background(), r.activateOpts(r.volume(name, v.root, v), policy))
	if err != nil {
		r.failf("verity-activate", err)
		return
	}
	defer r.remove(name)
	r.ok("verity-activate", "%s: %s", res.DevicePath, res.Table)
	b, err := readDevice(res.DevicePath, 0, len(v.content))
	if err != nil || !bytes.Equal(b, v.content) {
		r.failf("verity-activate-read", fmt.Errorf("reading all: %v", err))
	} else {
		r.ok("verity-activate-read", "%d bytes verified", len(b))
	}
	r.expectStatus("verity-activate-status", name, "V")
	if info, err := r.ctl.Info(name); err != nil || !info.ReadOnly || !strings.HasPrefix(info.UUID, "CRYPT-VERITY-") {
		r.failf("verity-activate-info", fmt.Errorf("%+v, %v: expected read-only, uuid CRYPT-VERITY-…", info, err))
	} else {
		r.ok("verity-activate-info", "uuid %s", info.UUID)
	}
}

// wrongRootHash must be refused before any device exists.
func (r *run) wrongRootHash(v *volume) {
	name := prefix + "wrong"
	wrong := append([]byte(nil), v.root...)
	wrong[0] ^= 1
	_, err := verity.Activate(context.Background(), r.activateOpts(r.volume(name, wrong, v), config.CorruptionPanic))
	var me *verity.MismatchError
	if !errors.As(err, &me) || me.Role != "hash device" {
		r.failf("verity-wrong-roothash", fmt.Errorf("expected a hash device mismatch, got %v", err))
		return
	}
	if _, err := r.ctl.Info(name); !errors.Is(err, unix.ENXIO) {
		r.failf("verity-wrong-roothash", fmt.Errorf("a device %s exists after the refusal: %v", name, err))
		return
	}
	r.ok("verity-wrong-roothash", "refused: %v", err)
}

// signatureKey activates with a root hash signature that is not a valid PKCS#7 message.
// The load must fail, and the kernel must have found the key (its log then says the
// verification failed, not that the key is invalid): that proves the key reaches
// dm-verity's constructor through the keyring.
func (r *run) signatureKey(v *volume) {
	name := prefix + "signed"
	vol := r.volume(name, v.root, v)
	vol.Options.RootHashSignature = "base64:MAA=" // DER SEQUENCE of length 0
	// Raw non-blocking reads: an *os.File would park on EAGAIN waiting for new records.
	kmsg, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		r.failf("verity-signature-key", fmt.Errorf("opening /dev/kmsg: %w", err))
		return
	}
	defer unix.Close(kmsg)
	unix.Seek(kmsg, 0, 2) // SEEK_END: only records logged from now on
	start := time.Now()
	_, err = verity.Activate(context.Background(), r.activateOpts(vol, config.CorruptionPanic))
	took := time.Since(start)
	if err == nil {
		r.remove(name)
		r.failf("verity-signature-key", errors.New("a garbage signature was accepted"))
		return
	}
	var log strings.Builder
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(kmsg, buf)
		if err == unix.EPIPE {
			continue // records overwritten while reading
		}
		if err != nil || n <= 0 {
			break
		}
		log.Write(buf[:n])
	}
	switch text := log.String(); {
	case strings.Contains(text, "Invalid key specified"):
		r.failf("verity-signature-key", fmt.Errorf("the kernel did not find the key: %q", text))
	case strings.Contains(text, "Root hash verification failed"):
		r.ok("verity-signature-key", "key found, signature rejected as expected in %s: %v", took.Round(time.Millisecond), err)
	default:
		r.failf("verity-signature-key", fmt.Errorf("activation failed with %v and the kernel log says %q", err, text))
	}
}

// corruption maps a copy of the data with one altered block (EIO mode, so that the kernel
// fails the read instead of panicking) and expects the read to fail and the status "C".
func (r *run) corruption(v *volume) {
	name := prefix + "corrupt"
	bad := append([]byte(nil), v.content...)
	const block = 5
	bad[block*4096+17] ^= 0xff
	file := filepath.Join(r.dir, "corrupted")
	if err := os.WriteFile(file, bad, 0o600); err != nil {
		r.failf("verity-corruption", err)
		return
	}
	dev, detach, err := attachLoop(file)
	if err != nil {
		r.failf("verity-corruption", err)
		return
	}
	defer detach()
	t := table(v, dev, verity.CorruptionEIO)
	if _, err := r.ctl.CreateAndLoad(name, "", []dm.Target{t.Target()}, true); err != nil {
		r.failf("verity-corruption", err)
		return
	}
	defer r.remove(name)
	node := dm.NodePath(r.ctl.DevDir, name)
	if _, err := readDevice(node, 0, 4096); err != nil {
		r.failf("verity-corruption", fmt.Errorf("block 0 is intact but reading it failed: %v", err))
		return
	}
	r.expectStatus("verity-corruption-before", name, "V")
	if _, err := readDevice(node, block*4096, 4096); !errors.Is(err, unix.EIO) {
		r.failf("verity-corruption", fmt.Errorf("reading altered block %d: %v, expected EIO", block, err))
		return
	}
	r.ok("verity-corruption", "altered block %d read fails with EIO", block)
	r.expectStatus("verity-corruption-status", name, "C")
}

func (r *run) list() {
	devs, err := r.ctl.List()
	if err != nil {
		r.failf("list", err)
		return
	}
	var names []string
	for _, d := range devs {
		names = append(names, d.Name)
	}
	r.ok("list", "%d devices: %v", len(devs), names)
}

// cleanup removes any test device a failed check left behind.
func (r *run) cleanup() {
	devs, err := r.ctl.List()
	if err != nil {
		return
	}
	for _, d := range devs {
		if strings.HasPrefix(d.Name, prefix) {
			if err := r.ctl.Remove(d.Name); err != nil {
				r.failf("cleanup", err)
			} else {
				fmt.Printf("DMTEST: note removed leftover %s\n", d.Name)
			}
		}
	}
}
