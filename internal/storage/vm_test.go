package storage

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/dm"
)

// TestVMStage runs the real stage (device-mapper, BLKPG, keyring, mke2fs)
// inside a VM whose boot disk has free space. It only runs when
// CVMBOOT_STORAGE_VM_ROOT names the root partition, e.g.
//
//	go test -c -tags cvmboot_testhook -o storage.test ./internal/storage
//	# in the VM, as root, with dm_crypt and dm_integrity loaded:
//	CVMBOOT_STORAGE_VM_ROOT=/dev/vda2 ./storage.test -test.run TestVMStage -test.v
//
// CVMBOOT_STORAGE_VM_INTEGRITY and _FS pick storage.integrity and
// storage.filesystem. The test prints VMSTAGE: lines for the calling
// script; with the cvmboot_testhook tag it also checks that the volume key
// appears in no log line, fact or table.
func TestVMStage(t *testing.T) {
	root := os.Getenv("CVMBOOT_STORAGE_VM_ROOT")
	if root == "" {
		t.Skip("CVMBOOT_STORAGE_VM_ROOT is not set: not in the storage test VM")
	}
	cfg := config.Default().Storage
	if v := os.Getenv("CVMBOOT_STORAGE_VM_INTEGRITY"); v != "" {
		cfg.Integrity = config.Integrity(v)
	}
	if v := os.Getenv("CVMBOOT_STORAGE_VM_FS"); v != "" {
		cfg.Filesystem = config.StorageFilesystem(v)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	dev, _ := zap.NewDevelopment()
	log := zap.New(zapcore.NewTee(core, dev.Core()))
	s := New(cfg, log, func() string { return root }, t.TempDir())
	facts, err := s.Run(context.Background())
	if err != nil {
		t.Fatalf("VMSTAGE: FAIL %v", err)
	}
	keys := make([]string, 0, len(facts))
	for k := range facts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("VMSTAGE: fact %s=%s\n", k, facts[k])
	}

	c, err := dm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var tables strings.Builder
	for _, name := range []string{DeviceName, IntegrityName(DeviceName)} {
		ts, err := c.Table(name)
		if err != nil {
			continue
		}
		for _, tg := range ts {
			fmt.Printf("VMSTAGE: table %s: %s\n", name, tg)
			tables.WriteString(tg.String() + "\n")
		}
	}

	hooks, _ := filepath.Glob("/run/cvmboot-test/volume-key-" + facts["luks_uuid"] + ".hex")
	if len(hooks) == 0 {
		fmt.Println("VMSTAGE: no test hook key (product build)")
		fmt.Println("VMSTAGE: ok")
		return
	}
	b, err := os.ReadFile(hooks[0])
	if err != nil {
		t.Fatal(err)
	}
	keyHex := strings.TrimSpace(string(b))
	if _, err := hex.DecodeString(keyHex); err != nil || len(keyHex) == 0 {
		t.Fatalf("test hook key %q: %v", keyHex, err)
	}
	fmt.Printf("VMSTAGE: key %s\n", keyHex)
	var all strings.Builder
	for _, e := range logs.All() {
		all.WriteString(e.Message)
		for k, v := range e.ContextMap() {
			fmt.Fprintf(&all, " %s=%v", k, v)
		}
		all.WriteString("\n")
	}
	for k, v := range facts {
		all.WriteString(k + "=" + v + "\n")
	}
	all.WriteString(tables.String())
	if strings.Contains(strings.ToLower(all.String()), keyHex[:32]) {
		t.Fatal("VMSTAGE: FAIL the volume key appears in the logs, facts or tables")
	}
	fmt.Println("VMSTAGE: ok")
}
