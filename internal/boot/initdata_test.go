package boot

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/initdata"
)

const initdataDoc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = \"[token_configs.kbs]\"\n"

// fakeInitdata serves documents by device and file, and records what it installed.
type fakeInitdata struct {
	scanDev   string
	devices   map[string][]byte
	files     map[string][]byte
	err       error
	installed *initdata.Document
}

func (f *fakeInitdata) Scan() (string, []byte, error) {
	if f.err != nil || f.scanDev == "" {
		return "", nil, f.err
	}
	return f.scanDev, f.devices[f.scanDev], nil
}
func (f *fakeInitdata) ReadDevice(path string) ([]byte, error) {
	if b, ok := f.devices[path]; ok {
		return b, f.err
	}
	return nil, initdata.ErrNoMagic
}
func (f *fakeInitdata) ReadFile(path string) ([]byte, error) {
	if b, ok := f.files[path]; ok {
		return b, nil
	}
	return nil, os.ErrNotExist
}
func (f *fakeInitdata) Install(doc *initdata.Document) ([]string, error) {
	f.installed = doc
	return []string{"/run/confidential-containers/initdata/initdata.toml"}, nil
}

func initdataBoot(src config.InitdataSource, path string, att *fakeAttest, id *fakeInitdata) *Boot {
	cfg := plainConfig()
	cfg.Initdata = config.Initdata{Source: src, Path: path}
	if att.present || att.platforms != nil {
		cfg.Attest.Require = config.AttestTPM
	}
	return &Boot{Config: cfg, Attest: att, InitdataSource: id, Mode: ModeInitramfs, dec: &Decisions{},
		measuring: att.present || att.platforms != nil, Devices: &fakeMachine{devices: map[string]string{"/dev/vdb": "/dev/vdb"}}}
}

func sha256Hex(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func TestInitdataStep(t *testing.T) {
	digest := sha256.Sum256([]byte(initdataDoc))
	hostData := digest[:]
	mrConfigID := append(digest[:], make([]byte, 16)...)
	sha384Doc := strings.Replace(initdataDoc, "sha256", "sha384", 1)
	for _, tc := range []struct {
		name      string
		src       config.InitdataSource
		path      string
		required  bool
		att       *fakeAttest
		id        *fakeInitdata
		wantErr   string
		wantSkip  bool
		wantEvent *eventlog.Initdata
	}{
		{name: "none reads nothing", src: config.InitdataNone, att: &fakeAttest{present: true}, id: &fakeInitdata{scanDev: "/dev/vdb"}, wantSkip: true},
		{name: "auto on a vTPM: PCR 8", src: config.InitdataAuto, att: &fakeAttest{present: true},
			id:        &fakeInitdata{scanDev: "/dev/vdb", devices: map[string][]byte{"/dev/vdb": []byte(initdataDoc)}},
			wantEvent: &eventlog.Initdata{Found: true, Source: "device /dev/vdb", Version: "0.1.0", Algorithm: "sha256", Digest: sha256Hex(initdataDoc), Bound: []string{"pcr8"}}},
		{name: "auto finds none: measured", src: config.InitdataAuto, att: &fakeAttest{present: true}, id: &fakeInitdata{}, wantSkip: true,
			wantEvent: &eventlog.Initdata{Found: false, Source: "every disk (none carries the initdata magic)"}},
		{name: "auto finds none, required", src: config.InitdataAuto, required: true, att: &fakeAttest{present: true}, id: &fakeInitdata{},
			wantErr: "initdata.required is true but no initdata was found (initdata.source auto: every disk"},
		{name: "bad gzip on the disk", src: config.InitdataAuto, att: &fakeAttest{present: true}, id: &fakeInitdata{err: errors.New("/dev/vdb: initdata: the 8 bytes after the header are not gzip")},
			wantErr: "not gzip"},
		{name: "bad TOML", src: config.InitdataAuto, att: &fakeAttest{present: true}, id: &fakeInitdata{scanDev: "/dev/vdb", devices: map[string][]byte{"/dev/vdb": []byte("version = ")}},
			wantErr: "initdata from device /dev/vdb: initdata: not TOML"},
		{name: "device without the magic", src: config.InitdataDevice, path: "/dev/vdb", att: &fakeAttest{present: true}, id: &fakeInitdata{},
			wantErr: "initdata device /dev/vdb (/dev/vdb): initdata: no initdata magic"},
		{name: "file of peer pods", src: config.InitdataFile, path: "/run/peerpod/initdata", att: &fakeAttest{present: true},
			id:        &fakeInitdata{files: map[string][]byte{"/run/peerpod/initdata": []byte(initdataDoc)}},
			wantEvent: &eventlog.Initdata{Found: true, Source: "file /run/peerpod/initdata", Version: "0.1.0", Algorithm: "sha256", Digest: sha256Hex(initdataDoc), Bound: []string{"pcr8"}}},
		{name: "SEV-SNP HOST_DATA matches", src: config.InitdataAuto,
			att:       &fakeAttest{platforms: []evidence.Platform{evidence.PlatformSNP}, hostConfig: map[evidence.Platform][]byte{evidence.PlatformSNP: hostData}},
			id:        &fakeInitdata{scanDev: "/dev/vdb", devices: map[string][]byte{"/dev/vdb": []byte(initdataDoc)}},
			wantEvent: &eventlog.Initdata{Found: true, Source: "device /dev/vdb", Version: "0.1.0", Algorithm: "sha256", Digest: sha256Hex(initdataDoc), Bound: []string{"hostdata"}}},
		{name: "SEV-SNP HOST_DATA differs", src: config.InitdataAuto,
			att:     &fakeAttest{platforms: []evidence.Platform{evidence.PlatformSNP}, hostConfig: map[evidence.Platform][]byte{evidence.PlatformSNP: make([]byte, 32)}},
			id:      &fakeInitdata{scanDev: "/dev/vdb", devices: map[string][]byte{"/dev/vdb": []byte(initdataDoc)}},
			wantErr: "initdata from device /dev/vdb has sha256 digest " + sha256Hex(initdataDoc) + ", but the SEV-SNP HOST_DATA the host launched this VM with is 0000"},
		{name: "TDX MRCONFIGID matches, and a vTPM", src: config.InitdataAuto,
			att:       &fakeAttest{platforms: []evidence.Platform{evidence.PlatformTDX, evidence.PlatformTPM}, hostConfig: map[evidence.Platform][]byte{evidence.PlatformTDX: mrConfigID}},
			id:        &fakeInitdata{scanDev: "/dev/vdb", devices: map[string][]byte{"/dev/vdb": []byte(initdataDoc)}},
			wantEvent: &eventlog.Initdata{Found: true, Source: "device /dev/vdb", Version: "0.1.0", Algorithm: "sha256", Digest: sha256Hex(initdataDoc), Bound: []string{"mrconfigid", "pcr8"}}},
		{name: "TDX MRCONFIGID without padding", src: config.InitdataAuto,
			att:     &fakeAttest{platforms: []evidence.Platform{evidence.PlatformTDX}, hostConfig: map[evidence.Platform][]byte{evidence.PlatformTDX: append(digest[:], 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)}},
			id:      &fakeInitdata{scanDev: "/dev/vdb", devices: map[string][]byte{"/dev/vdb": []byte(initdataDoc)}},
			wantErr: "but the TDX MRCONFIGID the host launched this VM with is",
		},
		{name: "sha384 on a vTPM alone", src: config.InitdataAuto, att: &fakeAttest{present: true},
			id:      &fakeInitdata{scanDev: "/dev/vdb", devices: map[string][]byte{"/dev/vdb": []byte(sha384Doc)}},
			wantErr: "uses sha384, but on a vTPM only a sha256 document can be bound"},
		{name: "sha384 on TDX", src: config.InitdataAuto,
			att: &fakeAttest{platforms: []evidence.Platform{evidence.PlatformTDX}, hostConfig: map[evidence.Platform][]byte{evidence.PlatformTDX: func() []byte {
				d := sha512.Sum384([]byte(sha384Doc))
				return d[:]
			}()}},
			id: &fakeInitdata{scanDev: "/dev/vdb", devices: map[string][]byte{"/dev/vdb": []byte(sha384Doc)}},
			wantEvent: &eventlog.Initdata{Found: true, Source: "device /dev/vdb", Version: "0.1.0", Algorithm: "sha384", Digest: func() string {
				d := sha512.Sum384([]byte(sha384Doc))
				return hex.EncodeToString(d[:])
			}(), Bound: []string{"mrconfigid"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := initdataBoot(tc.src, tc.path, tc.att, tc.id)
			b.Config.Initdata.Required = tc.required
			_, err := b.initdata(context.Background())
			var skip *stage.SkipError
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if len(tc.att.initdata) > 0 || tc.id.installed != nil {
					t.Errorf("refused, yet measured %v / installed %v", tc.att.initdata, tc.id.installed)
				}
				return
			case tc.wantSkip:
				if !errors.As(err, &skip) {
					t.Fatalf("err = %v, want a skip", err)
				}
			case err != nil:
				t.Fatal(err)
			}
			if tc.wantEvent == nil {
				if len(tc.att.initdata) > 0 {
					t.Errorf("measured %+v", tc.att.initdata)
				}
				return
			}
			if len(tc.att.initdata) != 1 || !equalInitdata(tc.att.initdata[0], *tc.wantEvent) {
				t.Errorf("measured %+v, want %+v", tc.att.initdata, *tc.wantEvent)
			}
			if tc.wantEvent.Found != (tc.id.installed != nil) {
				t.Errorf("installed %v", tc.id.installed)
			}
		})
	}
}

func equalInitdata(a, b eventlog.Initdata) bool {
	return a.Found == b.Found && a.Source == b.Source && a.Version == b.Version && a.Algorithm == b.Algorithm &&
		a.Digest == b.Digest && slices.Equal(a.Bound, b.Bound)
}
