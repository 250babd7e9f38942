package evidence_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/teeverify"
)

var (
	rootHash  = strings.Repeat("ab", 32)
	nonce     = []byte("relying party nonce")
	otherHash = strings.Repeat("cd", 32)
)

// bootEvents are the decisions of a typical boot; rootHash is the verity root hash.
func bootEvents(root string) []eventlog.Event {
	return []eventlog.Event{
		eventlog.Phase("enter-initrd"),
		eventlog.Config{SHA256: strings.Repeat("c", 64), Path: "/etc/cvmboot/config.yaml", Found: true}.Event(),
		eventlog.Cmdline{SHA256: strings.Repeat("d", 64)}.Event(),
		eventlog.Verity{Target: "root", RootHash: root, HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
		eventlog.Storage{Encrypted: true, Cipher: "aes-xts-plain64", KeyBits: 512, Integrity: "hmac-sha256", KeySource: "random", SectorSize: 4096, Filesystem: "ext4", Mountpoint: "/run/kata-containers/image"}.Event(),
		eventlog.Overlay{Enabled: true, Upper: "tmpfs", Size: "50%"}.Event(),
	}
}

// bootLog measures the boot events into a new log with the given registers.
func bootLog(t *testing.T, root string, ext ...measure.Extender) *measure.Log {
	t.Helper()
	log, err := measure.Open(filepath.Join(t.TempDir(), "eventlog"), ext...)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range bootEvents(root) {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	return log
}

// shapeOnly is an extender that extends nothing, to rebuild a log with the digests a real
// register family would have made.
type shapeOnly struct {
	kind string
	algs []crypto.Hash
}

func (s shapeOnly) Kind() string                             { return s.kind }
func (s shapeOnly) Algorithms() []crypto.Hash                { return s.algs }
func (s shapeOnly) Extend(int, map[crypto.Hash][]byte) error { return nil }
func (s shapeOnly) extenders() []measure.Extender            { return []measure.Extender{s} }
func shapes(exts []measure.Extender) (out []measure.Extender) {
	for _, e := range exts {
		out = append(out, shapeOnly{e.Kind(), e.Algorithms()})
	}
	return out
}

// fakeRTMR computes RTMR values as the TDX module would.
type fakeRTMR struct{ value []byte }

func (f *fakeRTMR) Kind() string              { return eventlog.KindRTMR }
func (f *fakeRTMR) Algorithms() []crypto.Hash { return []crypto.Hash{crypto.SHA384} }
func (f *fakeRTMR) Extend(index int, d map[crypto.Hash][]byte) error {
	if f.value == nil {
		f.value = make([]byte, 48)
	}
	s := sha512.Sum384(append(append([]byte(nil), f.value...), d[crypto.SHA384]...))
	f.value = s[:]
	return nil
}

func logBytes(t *testing.T, log *measure.Log) []byte {
	b, err := os.ReadFile(log.Path())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tamper copies the evidence directory and applies edit to the copy, rewriting evidence.json
// so that its digests and sizes match the edited files, as a careful attacker would.
func tamper(t *testing.T, dir string, edit func(ev *evidence.Evidence)) string {
	t.Helper()
	ev, err := evidence.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	edit(ev)
	out := t.TempDir()
	if err := ev.Write(out); err != nil {
		t.Fatal(err)
	}
	return out
}

// forgedLog replaces the event log with the same boot measured with another root hash, and
// makes evidence.json's REPORT_DATA match it.
func forgedLog(t *testing.T, exts []measure.Extender) func(ev *evidence.Evidence) {
	return func(ev *evidence.Evidence) {
		forged := bootLog(t, otherHash, shapes(exts)...)
		ev.EventLog.Data = logBytes(t, forged)
		n, _ := hex.DecodeString(ev.Nonce)
		rd := eventlog.ReportData(ev.EventLog.Data, n)
		ev.ReportData = hex.EncodeToString(rd[:])
	}
}

type rejection struct {
	name      string
	dir       func(t *testing.T, good string) string
	opts      func(o *evidence.Options)
	wantCheck string
	wantMsg   string
}

func expectRejections(t *testing.T, good string, base evidence.Options, cases []rejection) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := good
			if c.dir != nil {
				dir = c.dir(t, good)
			}
			opts := base
			if c.opts != nil {
				c.opts(&opts)
			}
			_, err := evidence.Verify(dir, opts)
			var verr *evidence.Error
			if !errors.As(err, &verr) {
				t.Fatalf("Verify error = %v, want an *evidence.Error", err)
			}
			if verr.Check != c.wantCheck || !strings.Contains(verr.Msg, c.wantMsg) {
				t.Fatalf("Verify error = %v\nwant check %q with %q", err, c.wantCheck, c.wantMsg)
			}
			t.Logf("rejected: %v", err)
		})
	}
}

// commonRejections apply to evidence of any platform.
func commonRejections(exts []measure.Extender, platformBinding string) []rejection {
	return []rejection{
		{name: "edited event, evidence.json untouched", dir: func(t *testing.T, good string) string {
			out := t.TempDir()
			copyDir(t, good, out)
			b, _ := os.ReadFile(filepath.Join(out, evidence.EventLogName))
			os.WriteFile(filepath.Join(out, evidence.EventLogName), []byte(strings.Replace(string(b), rootHash, otherHash, 1)), 0o644)
			return out
		}, wantCheck: "file", wantMsg: "eventlog has SHA-256"},
		{name: "edited event, evidence.json made consistent", dir: func(t *testing.T, good string) string {
			return tamper(t, good, forgedLog(t, exts))
		}, wantCheck: "report-data", wantMsg: platformBinding},
		{name: "edited event, REPORT_DATA left", dir: func(t *testing.T, good string) string {
			return tamper(t, good, func(ev *evidence.Evidence) {
				saved := ev.ReportData
				forgedLog(t, exts)(ev)
				ev.ReportData = saved
			})
		}, wantCheck: "report-data", wantMsg: "evidence.json says REPORT_DATA"},
		{name: "event dropped", dir: func(t *testing.T, good string) string {
			return tamper(t, good, func(ev *evidence.Evidence) {
				lines := strings.SplitAfter(string(ev.EventLog.Data), "\n")
				ev.EventLog.Data = []byte(strings.Join(lines[:len(lines)-2], ""))
				n, _ := hex.DecodeString(ev.Nonce)
				rd := eventlog.ReportData(ev.EventLog.Data, n)
				ev.ReportData = hex.EncodeToString(rd[:])
			})
		}, wantCheck: "report-data", wantMsg: platformBinding},
		{name: "other nonce", opts: func(o *evidence.Options) { o.Nonce = []byte("another nonce") }, wantCheck: "nonce", wantMsg: `the evidence was made for nonce "72656c`},
		{name: "other root hash", opts: func(o *evidence.Options) { o.ExpectRootHash = otherHash }, wantCheck: "root-hash", wantMsg: "the root was verified against root hash " + rootHash + ", expected " + otherHash},
	}
}

func copyDir(t *testing.T, from, to string) {
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func checkBootClaims(t *testing.T, c *evidence.Claims) {
	t.Helper()
	if !c.RootHashExpected || !c.RootHashEnforced || c.RootHash != rootHash {
		t.Errorf("root claims: hash %s expected %v enforced %v", c.RootHash, c.RootHashExpected, c.RootHashEnforced)
	}
	if c.Storage == nil || !c.Storage.Encrypted || c.Storage.Cipher != "aes-xts-plain64" || c.Storage.Integrity != "hmac-sha256" {
		t.Errorf("storage claims %+v", c.Storage)
	}
	if c.Overlay == nil || !c.Overlay.Enabled || c.Overlay.Upper != "tmpfs" {
		t.Errorf("overlay claims %+v", c.Overlay)
	}
	if c.Config == nil || c.Config.SHA256 != strings.Repeat("c", 64) || c.Cmdline == nil {
		t.Errorf("config %+v cmdline %+v", c.Config, c.Cmdline)
	}
	if strings.Join(c.Phases, ",") != "enter-initrd" || len(c.Events) != 6 || !c.NonceChecked {
		t.Errorf("phases %v, %d events, nonce checked %v", c.Phases, len(c.Events), c.NonceChecked)
	}
}

func TestEndToEndTPM(t *testing.T) {
	tpm := swtpmtest.Start(t)
	pcrs, err := measure.NewTPM(tpm)
	if err != nil {
		t.Fatal(err)
	}
	exts := []measure.Extender{pcrs}
	log := bootLog(t, rootHash, exts...)
	src := &tee.TPM{Path: "swtpm", Open: func() (transport.TPMCloser, error) { return keepOpen{tpm}, nil }}
	good := t.TempDir()
	ev, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, good)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := evidence.ParseAK(ev.Attestations[0].AKPublic.Data)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := evidence.PublicKeyPEM(ak)
	roots, err := evidence.ParseTrustedRoots([]byte(pem))
	if err != nil {
		t.Fatal(err)
	}
	opts := evidence.Options{ExpectRootHash: rootHash, TrustedRoots: roots, Nonce: nonce, AllowUnknownUKI: true}
	claims, err := evidence.Verify(good, opts)
	if err != nil {
		t.Fatalf("Verify of genuine evidence: %v", err)
	}
	checkBootClaims(t, claims)
	p := claims.Platforms[0]
	last := p.Registers[len(p.Registers)-1]
	if !p.Authenticated || len(p.Registers) != len(eventlog.QuotedPCRs) || !last.Replayed || last.Register != "pcr15:sha256" {
		t.Errorf("platform claims %+v", p)
	}
	t.Logf("claims:\n%s", claims)

	cases := commonRejections(exts, "tpm: the quote's qualifying data is")
	cases = append(cases,
		rejection{name: "AK not pinned", opts: func(o *evidence.Options) { o.TrustedRoots = nil }, wantCheck: "signature", wantMsg: "the attestation key is not among the trusted keys"},
		rejection{name: "PCR value changed", dir: func(t *testing.T, good string) string {
			return tamper(t, good, func(ev *evidence.Evidence) {
				regs := ev.Attestations[0].Registers
				regs[len(regs)-1].Value = strings.Repeat("00", 32) // PCR 15
			})
		}, wantCheck: "registers", wantMsg: "digest to"},
		rejection{name: "quote byte flipped", dir: func(t *testing.T, good string) string {
			return tamper(t, good, func(ev *evidence.Evidence) {
				ev.Attestations[0].Report.Data[len(ev.Attestations[0].Report.Data)-1] ^= 1
			})
		}, wantCheck: "signature", wantMsg: "the quote signature does not verify with the AK"},
	)
	expectRejections(t, good, opts, cases)

	// Unpinned but accepted: the claims say the signer is unknown and show the key to pin.
	unpinned := opts
	unpinned.TrustedRoots, unpinned.AllowUnsigned = nil, evidence.AllPlatforms
	c, err := evidence.Verify(good, unpinned)
	if err != nil || c.Platforms[0].Authenticated || !strings.Contains(c.Platforms[0].Authenticity, "not established") || c.Platforms[0].AKPublicPEM != pem {
		t.Errorf("unpinned verify: %v, %+v", err, c)
	}

	// A measurement extended behind the log's back: the quote no longer matches the log.
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(15), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: make([]byte, 32)}}},
	}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	later := t.TempDir()
	if _, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, later); err != nil {
		t.Fatal(err)
	}
	expectRejections(t, later, opts, []rejection{{name: "unlogged extend", wantCheck: "registers", wantMsg: "PCR 15 (sha256) is"}})
}

type keepOpen struct{ transport.TPMCloser }

func (keepOpen) Close() error { return nil }

func TestEndToEndSNP(t *testing.T) {
	signer := teetest.SNPSigner(t)
	certs := teetest.SNPCerts(t, signer)
	roots, err := evidence.ParseTrustedRoots(teetest.SNPRoots(signer))
	if err != nil {
		t.Fatal(err)
	}
	signed := func(in []byte) ([]byte, error) { return teetest.SNPReport(signer, in) }

	for _, via := range []string{"configfs-tsm", "ioctl"} {
		t.Run(via, func(t *testing.T) {
			log := bootLog(t, rootHash) // SEV-SNP has no runtime register
			snp := &tee.SNP{TSM: &tee.TSM{Client: teetest.TSM("sev_guest", signed, certs), ReportDir: "/sys/kernel/config/tsm/report"}}
			if via == "ioctl" {
				// go-sev-guest's fake device answers only REPORT_DATA it was told about.
				d := teetest.SNPDevice(signer, certs, eventlog.ReportData(logBytes(t, log), nonce))
				snp = &tee.SNP{Open: func() (tee.Device, error) { return d, d.Open("") }, DevicePath: "/dev/sev-guest"}
			}
			good := t.TempDir()
			if _, err := tee.Collect(context.Background(), log, []tee.Source{snp}, nonce, good); err != nil {
				t.Fatal(err)
			}
			opts := evidence.Options{ExpectRootHash: rootHash, TrustedRoots: roots, Nonce: nonce, Signatures: teeverify.Verifier{}, AllowUnknownUKI: true}
			claims, err := evidence.Verify(good, opts)
			if err != nil {
				t.Fatalf("Verify of genuine evidence: %v", err)
			}
			checkBootClaims(t, claims)
			if p := claims.Platforms[0]; !p.Authenticated || p.Source != via || !strings.Contains(p.Authenticity, "VCEK, certified up to the trusted roots' ARK-Milan") {
				t.Errorf("platform claims %+v", p)
			}
			cases := append(commonRejections(nil, "sev-snp: the snp-report binds REPORT_DATA"),
				rejection{name: "AMD's real roots do not certify the fake chain", opts: func(o *evidence.Options) { o.TrustedRoots = nil }, wantCheck: "signature", wantMsg: "sev-snp: signature chain"},
				rejection{name: "report byte flipped", dir: func(t *testing.T, good string) string {
					return tamper(t, good, func(ev *evidence.Evidence) { ev.Attestations[0].Report.Data[0x90] ^= 1 })
				}, wantCheck: "signature", wantMsg: "sev-snp: signature chain"},
				rejection{name: "no verifier", opts: func(o *evidence.Options) { o.Signatures = nil }, wantCheck: "signature", wantMsg: "no signature verifier is configured"},
				rejection{name: "no certificates", dir: func(t *testing.T, good string) string {
					return tamper(t, good, func(ev *evidence.Evidence) { ev.Attestations[0].Certificates = nil })
				}, wantCheck: "signature", wantMsg: "the host provided no SEV-SNP certificate table"},
				rejection{name: "debug guest", dir: func(t *testing.T, good string) string {
					return tamper(t, good, func(ev *evidence.Evidence) {
						r := ev.Attestations[0].Report.Data
						r[0x0a] |= 1 << 3 // policy bit 19: DEBUG
						if err := teetest.SignSNPReport(signer, r); err != nil {
							t.Fatal(err)
						}
					})
				}, wantCheck: "policy", wantMsg: "sev-snp: the guest runs with debugging enabled"},
				rejection{name: "another launch measurement", opts: func(o *evidence.Options) {
					o.ExpectMeasurement = map[evidence.Platform][]byte{evidence.PlatformSNP: bytes.Repeat([]byte{1}, 48)}
				}, wantCheck: "policy", wantMsg: "sev-snp: the launch measurement (MEASUREMENT) is"},
			)
			expectRejections(t, good, opts, cases)
		})
	}
}

func TestEndToEndTDX(t *testing.T) {
	t.Run("TDREPORT", func(t *testing.T) {
		rtmr := &fakeRTMR{}
		exts := []measure.Extender{rtmr}
		log := bootLog(t, rootHash, exts...)
		rd := eventlog.ReportData(logBytes(t, log), nonce)
		var rtmrs [4][48]byte
		copy(rtmrs[3][:], rtmr.value)
		dev := teetest.TDXDevice(t, rd, teetest.TDReport(rd, rtmrs))
		src := &tee.TDX{Open: func() (tee.Device, error) { return dev, dev.Open("") }, DevicePath: "/dev/tdx_guest"}
		good := t.TempDir()
		if _, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, good); err != nil {
			t.Fatal(err)
		}
		opts := evidence.Options{ExpectRootHash: rootHash, Nonce: nonce, Signatures: teeverify.Verifier{}, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true}
		claims, err := evidence.Verify(good, opts)
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		checkBootClaims(t, claims)
		p := claims.Platforms[0]
		if p.Authenticated || !p.Registers[3].Replayed || p.Registers[3].Register != "rtmr3:sha384" {
			t.Errorf("platform claims %+v", p)
		}
		cases := append(commonRejections(exts, "tdx: the tdx-report binds REPORT_DATA"),
			rejection{name: "unsigned not allowed", opts: func(o *evidence.Options) { o.AllowUnsigned = nil }, wantCheck: "signature", wantMsg: "the evidence holds a TDREPORT"},
			rejection{name: "another MRTD", opts: func(o *evidence.Options) {
				o.ExpectMeasurement = map[evidence.Platform][]byte{evidence.PlatformTDX: bytes.Repeat([]byte{1}, 48)}
			}, wantCheck: "policy", wantMsg: "tdx: the MRTD is"},
			rejection{name: "listed RTMR differs", dir: func(t *testing.T, good string) string {
				return tamper(t, good, func(ev *evidence.Evidence) { ev.Attestations[0].Registers[3].Value = strings.Repeat("00", 48) })
			}, wantCheck: "registers", wantMsg: "evidence.json lists rtmr3:sha384"},
		)
		expectRejections(t, good, opts, cases)

		// RTMR 3 extended by something that did not log it.
		rtmrs[3][0] ^= 1
		dev2 := teetest.TDXDevice(t, rd, teetest.TDReport(rd, rtmrs))
		src2 := &tee.TDX{Open: func() (tee.Device, error) { return dev2, dev2.Open("") }, DevicePath: "/dev/tdx_guest"}
		bad := t.TempDir()
		if _, err := tee.Collect(context.Background(), log, []tee.Source{src2}, nonce, bad); err != nil {
			t.Fatal(err)
		}
		expectRejections(t, bad, opts, []rejection{{name: "unlogged extend", wantCheck: "registers", wantMsg: "tdx: RTMR 3 is"}})
	})

	t.Run("altered quote", func(t *testing.T) {
		rtmr := &fakeRTMR{}
		log := bootLog(t, rootHash, rtmr)
		src := &tee.TDX{TSM: &tee.TSM{Client: teetest.TSM("tdx_guest", func(in []byte) ([]byte, error) { return teetest.TDXQuote(in, rtmr.value), nil }, nil), ReportDir: "/sys/kernel/config/tsm/report"}}
		dir := t.TempDir()
		if _, err := tee.Collect(context.Background(), log, []tee.Source{src}, nonce, dir); err != nil {
			t.Fatal(err)
		}
		// Binding and registers are right, but the quote is not what Intel's enclave signed:
		// refused even when unsigned evidence is accepted.
		opts := evidence.Options{ExpectRootHash: rootHash, Nonce: nonce, Signatures: teeverify.Verifier{}, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true}
		expectRejections(t, dir, opts, []rejection{{name: "signature", wantCheck: "signature", wantMsg: "tdx: signature chain"}})
	})

	t.Run("sample production quote", func(t *testing.T) {
		quote, rd := teetest.SampleQuote()
		a := &evidence.Attestation{Platform: evidence.PlatformTDX, Kind: evidence.KindTDXQuote, Source: "sample", Report: evidence.File{Name: "tdx-quote.bin", Data: quote}}
		desc, err := teeverify.Verifier{Now: time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)}.VerifySignature(a, nil)
		if err != nil {
			t.Fatalf("the sample quote's chain does not verify: %v", err)
		}
		t.Logf("sample quote: %s", desc)
		// Its REPORT_DATA is not cvmboot's binding of any log: Verify names the mismatch.
		log := bootLog(t, rootHash)
		logData := logBytes(t, log)
		want := eventlog.ReportData(logData, nonce)
		ev := &evidence.Evidence{Nonce: hex.EncodeToString(nonce), ReportData: hex.EncodeToString(want[:]),
			EventLog: evidence.File{Name: evidence.EventLogName, Data: logData}, Attestations: []evidence.Attestation{*a}}
		dir := t.TempDir()
		if err := ev.Write(dir); err != nil {
			t.Fatal(err)
		}
		opts := evidence.Options{Nonce: nonce, Signatures: teeverify.Verifier{Now: time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)}, AllowUnknownUKI: true}
		expectRejections(t, dir, opts, []rejection{{name: "binding", wantCheck: "report-data", wantMsg: "tdx: the tdx-quote binds REPORT_DATA " + hex.EncodeToString(rd[:])}})
	})
}

// A record that extended no PCR is one the TPM never saw: whoever could write the log (root in
// the booted system) could have added it, so TPM evidence with one is refused even though the
// quote binds the log and PCR 15 replays.
func TestTPMRecordWithoutPCR(t *testing.T) {
	tpm := swtpmtest.Start(t)
	pcrs, err := measure.NewTPM(tpm)
	if err != nil {
		t.Fatal(err)
	}
	log := bootLog(t, rootHash, pcrs)
	unextended, err := measure.Open(log.Path()) // the same file, no register
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unextended.Measure(eventlog.Storage{Encrypted: true, Cipher: "aes-xts-plain64", KeyBits: 512, Integrity: "hmac-sha256", KeySource: "random"}.Event()); err != nil {
		t.Fatal(err)
	}
	src := &tee.TPM{Path: "swtpm", Open: func() (transport.TPMCloser, error) { return keepOpen{tpm}, nil }}
	dir := t.TempDir()
	if _, err := tee.Collect(context.Background(), unextended, []tee.Source{src}, nonce, dir); err != nil {
		t.Fatal(err)
	}
	_, err = evidence.Verify(dir, evidence.Options{Nonce: nonce, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true})
	var e *evidence.Error
	if !errors.As(err, &e) || e.Check != "event-log" || !strings.Contains(e.Msg, "record 6 (cvmboot.storage) extended no PCR: the TPM never saw it") {
		t.Fatalf("Verify: %v, want the record without a PCR refused", err)
	}
}

// On TDX with RTMR 3 in use, a record without an RTMR is one the TDX module never saw: root in
// the booted system could have put it into the log before asking for fresh evidence.
func TestTDXRecordWithoutRTMR(t *testing.T) {
	rtmr := &fakeRTMR{}
	log := bootLog(t, rootHash, rtmr)
	unextended, err := measure.Open(log.Path())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unextended.Measure(eventlog.Storage{Encrypted: true, Cipher: "aes-xts-plain64", KeyBits: 512, Integrity: "hmac-sha256", KeySource: "random"}.Event()); err != nil {
		t.Fatal(err)
	}
	rd := eventlog.ReportData(logBytes(t, unextended), nonce)
	var rtmrs [4][48]byte
	copy(rtmrs[3][:], rtmr.value)
	dev := teetest.TDXDevice(t, rd, teetest.TDReport(rd, rtmrs))
	src := &tee.TDX{Open: func() (tee.Device, error) { return dev, dev.Open("") }, DevicePath: "/dev/tdx_guest"}
	dir := t.TempDir()
	if _, err := tee.Collect(context.Background(), unextended, []tee.Source{src}, nonce, dir); err != nil {
		t.Fatal(err)
	}
	_, err = evidence.Verify(dir, evidence.Options{Nonce: nonce, Signatures: teeverify.Verifier{}, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true})
	var e *evidence.Error
	if !errors.As(err, &e) || e.Check != "event-log" || !strings.Contains(e.Msg, "tdx: record 6 (cvmboot.storage) extended no RTMR while record 0 did") {
		t.Fatalf("Verify: %v, want the record without an RTMR refused", err)
	}
}

// verifyReordered rewrites log with its lines in the order reorder gives (recnums renumbered,
// as root in the booted system could), takes fresh evidence over it and verifies it.
func verifyReordered(t *testing.T, tpm transport.TPMCloser, log *measure.Log, reorder func([]string) []string) *evidence.Claims {
	t.Helper()
	lines := reorder(strings.Split(strings.TrimSuffix(string(logBytes(t, log)), "\n"), "\n"))
	for i := range lines {
		lines[i] = regexp.MustCompile(`^\{"recnum":\d+`).ReplaceAllString(lines[i], fmt.Sprintf(`{"recnum":%d`, i)) + "\n"
	}
	if err := os.WriteFile(log.Path(), []byte(strings.Join(lines, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	edited, err := measure.Open(log.Path())
	if err != nil {
		t.Fatal(err)
	}
	src := &tee.TPM{Path: "swtpm", Open: func() (transport.TPMCloser, error) { return keepOpen{tpm}, nil }}
	dir := t.TempDir()
	if _, err := tee.Collect(context.Background(), edited, []tee.Source{src}, nonce, dir); err != nil {
		t.Fatal(err)
	}
	claims, err := evidence.Verify(dir, evidence.Options{Nonce: nonce, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true})
	if err != nil {
		t.Fatal(err)
	}
	return claims
}

// Root in the booted system measures a record into PCR 15 and writes it into the log before
// leave-initrd, which is in PCR 11: every register still replays, since nothing orders the
// records of two PCRs. The boot's end is the cvmboot.handoff record in PCR 15, so the record
// stays a runtime event and the storage claim the boot's.
func TestTPMReorderedLateRecord(t *testing.T) {
	tpm := swtpmtest.Start(t)
	pcrs, err := measure.NewTPM(tpm)
	if err != nil {
		t.Fatal(err)
	}
	log := bootLog(t, rootHash, pcrs)
	for _, ev := range []eventlog.Event{eventlog.Phase(eventlog.PhaseLeaveInitrd), eventlog.Handoff(),
		eventlog.Storage{Encrypted: false, Integrity: "none", Mountpoint: "/srv/late"}.Event()} {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	claims := verifyReordered(t, tpm, log, func(lines []string) []string {
		if len(lines) != 9 || !strings.Contains(lines[6], `"phase":"leave-initrd"`) {
			t.Fatalf("unexpected log:\n%s", strings.Join(lines, "\n"))
		}
		// The leave-initrd line moves to the end: by the log's order the late record is the boot's.
		return append(append(append([]string{}, lines[:6]...), lines[7:]...), lines[6])
	})
	if claims.Storage == nil || !claims.Storage.Encrypted || len(claims.RuntimeEvents) != 2 || claims.RuntimeEvents[0].Type != eventlog.TypeStorage {
		t.Fatalf("storage %+v, runtime events %+v: the late record changed a boot claim", claims.Storage, claims.RuntimeEvents)
	}
}

// A phase word root extends into PCR 11 after the boot and writes between leave-initrd and the
// handoff record is not a boot phase: PCR 11's own order puts it after leave-initrd.
func TestTPMLatePhase(t *testing.T) {
	tpm := swtpmtest.Start(t)
	pcrs, err := measure.NewTPM(tpm)
	if err != nil {
		t.Fatal(err)
	}
	log := bootLog(t, rootHash, pcrs)
	for _, ev := range []eventlog.Event{eventlog.Phase(eventlog.PhaseLeaveInitrd), eventlog.Handoff(), eventlog.Phase("enter-initrd")} {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	claims := verifyReordered(t, tpm, log, func(lines []string) []string {
		// The late phase line moves before the handoff line.
		return append(append(append([]string{}, lines[:7]...), lines[8]), lines[7])
	})
	if strings.Join(claims.Phases, ",") != "enter-initrd,leave-initrd" || len(claims.RuntimeEvents) != 1 || claims.RuntimeEvents[0].Type != eventlog.TypePhase {
		t.Fatalf("phases %v, runtime events %+v: the late phase counted as the boot's", claims.Phases, claims.RuntimeEvents)
	}
}

// A quote must cover PCR 11 (cvmboot's phases, leave-initrd among them) and PCR 15; one the
// bearer made over fewer PCRs is refused.
func TestTPMQuoteCoverage(t *testing.T) {
	for _, c := range []struct {
		pcrs []int
		want string
	}{{[]int{0, 4, eventlog.PCRSystem}, "the quote does not cover PCR 11"}, {[]int{eventlog.PCRPhases}, "the quote does not cover PCR 15"}} {
		tpm := swtpmtest.Start(t)
		pcrs, err := measure.NewTPM(tpm)
		if err != nil {
			t.Fatal(err)
		}
		log := bootLog(t, rootHash, pcrs)
		saved := eventlog.QuotedPCRs
		eventlog.QuotedPCRs = c.pcrs
		src := &tee.TPM{Path: "swtpm", Open: func() (transport.TPMCloser, error) { return keepOpen{tpm}, nil }}
		dir := t.TempDir()
		_, err = tee.Collect(context.Background(), log, []tee.Source{src}, nonce, dir)
		eventlog.QuotedPCRs = saved
		if err != nil {
			t.Fatal(err)
		}
		_, err = evidence.Verify(dir, evidence.Options{Nonce: nonce, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true})
		var e *evidence.Error
		if !errors.As(err, &e) || e.Check != "registers" || !strings.Contains(e.Msg, c.want) {
			t.Errorf("quote over %v: %v, want %q", c.pcrs, err, c.want)
		}
	}
}
