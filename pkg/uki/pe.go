package uki

import (
	"bytes"
	"cmp"
	"crypto"
	"debug/pe"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// MaxSections is the largest NumberOfSections Parse accepts: the PE limit of the Windows loader,
// and the limit systemd-stub 252 applies to the image it runs in (MAX_SECTIONS in
// src/boot/efi/pe.c). A UKI has a dozen or two.
const MaxSections = 96

// MaxZeroFill bounds the bytes an image's sections ask for beyond their file data (VirtualSize
// past SizeOfRawData, zeros when loaded), so that a small file cannot make the digests hash
// gigabytes of zeros. A UKI has a few KiB of it (the stub's .bss); Parse refuses more.
const MaxZeroFill = 16 << 20

// Sizes from the PE/COFF specification.
const (
	dosHeaderSize     = 0x40
	peSignatureSize   = 4
	fileHeaderSize    = 20 // binary.Size(pe.FileHeader{})
	sectionHeaderSize = 40 // binary.Size(pe.SectionHeader32{})
	checksumOffset    = 64 // CheckSum within the optional header, PE32 and PE32+
	optFixed32        = 96 // optional header before the data directories, PE32
	optFixed64        = 112
	maxDataDirs       = 16
)

// ErrFormat is wrapped by every error that says the input is not a PE image this package
// accepts (as opposed to an I/O error of the reader, which is returned as it is).
var ErrFormat = errors.New("not a valid PE image")

func formatErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrFormat}, a...)...)
}

// Section is one entry of the section table.
type Section struct {
	// Name is the 8-byte name field up to its first NUL. systemd-stub compares these raw bytes;
	// long names ("/4", an index into the COFF string table) are not resolved.
	Name             string
	RawName          [8]byte
	VirtualSize      uint32 // bytes in memory; the firmware zero-fills past SizeOfRawData
	VirtualAddress   uint32
	SizeOfRawData    uint32 // bytes in the file
	PointerToRawData uint32 // file offset
	Characteristics  uint32
}

// fileBytes is the number of the section's bytes taken from the file when the image is loaded:
// the smaller of VirtualSize and SizeOfRawData (the rest of VirtualSize is zeros).
func (s *Section) fileBytes() uint32 { return min(s.VirtualSize, s.SizeOfRawData) }

// DataDirectory is an entry of the optional header's data directory.
type DataDirectory = pe.DataDirectory

// Image is a parsed PE/COFF image (PE32 or PE32+) whose bytes stay in the reader: Parse reads
// the headers, the digests stream the rest.
type Image struct {
	r    io.ReaderAt
	size int64

	Machine             uint16
	PE32Plus            bool
	SizeOfHeaders       uint32
	SizeOfImage         uint32
	NumberOfRvaAndSizes uint32
	// CertTable is the certificate-table data directory entry (index 4): a file offset and a
	// size; zero when the image is unsigned or its optional header has no such entry.
	CertTable DataDirectory
	Sections  []Section

	checksumOff int64 // file offset of the optional header's CheckSum
	certDirOff  int64 // file offset of the certificate-table entry, -1 when absent
}

// Size is the file size the image was parsed with.
func (im *Image) Size() int64 { return im.size }

// Parse reads the headers of the PE image of size bytes in r and checks every offset and size
// the digests use, so that untrusted input gives an error wrapping ErrFormat, never a panic or
// a huge allocation. It refuses, beyond malformed headers: more than MaxSections sections, a
// section table past SizeOfHeaders, section data past the end of the file, over the headers,
// or overlapping another section's, a section past SizeOfImage in memory, more than
// MaxZeroFill bytes of zero fill, and a certificate table that is not at the end of the file
// or overlaps section data (Authenticode and the firmware assume it is last).
func Parse(r io.ReaderAt, size int64) (*Image, error) {
	im := &Image{r: r, size: size, certDirOff: -1}
	if size < dosHeaderSize {
		return nil, formatErr("%d bytes, smaller than a DOS header (%d)", size, dosHeaderSize)
	}
	dos, err := im.read(0, dosHeaderSize, "DOS header")
	if err != nil {
		return nil, err
	}
	if dos[0] != 'M' || dos[1] != 'Z' {
		return nil, formatErr("no MZ signature at offset 0 (found %q)", dos[:2])
	}
	lfanew := int64(binary.LittleEndian.Uint32(dos[0x3c:]))
	if lfanew < 4 || lfanew > size {
		return nil, formatErr("PE header offset %#x (e_lfanew) is outside the file (%d bytes)", lfanew, size)
	}
	hdr, err := im.read(lfanew, peSignatureSize+fileHeaderSize, "PE signature and COFF file header")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(hdr[:4], []byte("PE\x00\x00")) {
		return nil, formatErr("no PE signature at offset %#x (found %q)", lfanew, hdr[:4])
	}
	var fh pe.FileHeader
	_ = binary.Read(bytes.NewReader(hdr[4:]), binary.LittleEndian, &fh) // length checked above
	im.Machine = fh.Machine
	if fh.NumberOfSections == 0 {
		return nil, formatErr("the COFF header has no sections")
	}
	if fh.NumberOfSections > MaxSections {
		return nil, formatErr("NumberOfSections is %d, more than the %d a PE image may have", fh.NumberOfSections, MaxSections)
	}

	optOff := lfanew + peSignatureSize + fileHeaderSize
	optSize := int64(fh.SizeOfOptionalHeader)
	if optSize < 2 {
		return nil, formatErr("SizeOfOptionalHeader is %d: an image needs an optional header", optSize)
	}
	opt, err := im.read(optOff, optSize, "optional header")
	if err != nil {
		return nil, err
	}
	var fixed int64
	var ddOff int64 // offset of the data directories within the optional header
	switch magic := binary.LittleEndian.Uint16(opt); magic {
	case 0x10b:
		fixed, ddOff = optFixed32, optFixed32
	case 0x20b:
		fixed, ddOff = optFixed64, optFixed64
		im.PE32Plus = true
	default:
		return nil, formatErr("optional header magic %#x is neither PE32 (0x10b) nor PE32+ (0x20b)", magic)
	}
	if optSize < fixed {
		return nil, formatErr("SizeOfOptionalHeader is %d, smaller than the %d bytes of a %s optional header", optSize, fixed, im.kind())
	}
	// Decode through debug/pe's types; a short header is zero-extended and only the fields
	// within it are used.
	full := make([]byte, max(optSize, int64(binary.Size(pe.OptionalHeader64{}))))
	copy(full, opt)
	if im.PE32Plus {
		var oh pe.OptionalHeader64
		_ = binary.Read(bytes.NewReader(full), binary.LittleEndian, &oh)
		im.SizeOfHeaders, im.SizeOfImage, im.NumberOfRvaAndSizes = oh.SizeOfHeaders, oh.SizeOfImage, oh.NumberOfRvaAndSizes
	} else {
		var oh pe.OptionalHeader32
		_ = binary.Read(bytes.NewReader(full), binary.LittleEndian, &oh)
		im.SizeOfHeaders, im.SizeOfImage, im.NumberOfRvaAndSizes = oh.SizeOfHeaders, oh.SizeOfImage, oh.NumberOfRvaAndSizes
	}
	if im.NumberOfRvaAndSizes > maxDataDirs {
		return nil, formatErr("NumberOfRvaAndSizes is %d, more than the %d data directories PE defines", im.NumberOfRvaAndSizes, maxDataDirs)
	}
	if need := fixed + 8*int64(im.NumberOfRvaAndSizes); optSize < need {
		return nil, formatErr("SizeOfOptionalHeader is %d, but %d data directories need %d bytes", optSize, im.NumberOfRvaAndSizes, need)
	}
	im.checksumOff = optOff + checksumOffset
	if im.NumberOfRvaAndSizes > pe.IMAGE_DIRECTORY_ENTRY_SECURITY {
		e := ddOff + 8*pe.IMAGE_DIRECTORY_ENTRY_SECURITY
		im.certDirOff = optOff + e
		im.CertTable = DataDirectory{
			VirtualAddress: binary.LittleEndian.Uint32(opt[e:]),
			Size:           binary.LittleEndian.Uint32(opt[e+4:]),
		}
	}

	secOff := optOff + optSize
	secEnd := secOff + sectionHeaderSize*int64(fh.NumberOfSections)
	if int64(im.SizeOfHeaders) > size {
		return nil, formatErr("SizeOfHeaders %#x is past the end of the file (%d bytes)", im.SizeOfHeaders, size)
	}
	if secEnd > int64(im.SizeOfHeaders) {
		return nil, formatErr("the section table [%#x, %#x) of %d sections ends past SizeOfHeaders %#x", secOff, secEnd, fh.NumberOfSections, im.SizeOfHeaders)
	}
	table, err := im.read(secOff, secEnd-secOff, "section table")
	if err != nil {
		return nil, err
	}
	var zeroFill int64
	for i := range int(fh.NumberOfSections) {
		var sh pe.SectionHeader32
		_ = binary.Read(bytes.NewReader(table[i*sectionHeaderSize:]), binary.LittleEndian, &sh)
		s := Section{RawName: sh.Name, VirtualSize: sh.VirtualSize, VirtualAddress: sh.VirtualAddress,
			SizeOfRawData: sh.SizeOfRawData, PointerToRawData: sh.PointerToRawData, Characteristics: sh.Characteristics}
		s.Name = string(sh.Name[:])
		if n := bytes.IndexByte(sh.Name[:], 0); n >= 0 {
			s.Name = string(sh.Name[:n])
		}
		if end := uint64(s.VirtualAddress) + uint64(s.VirtualSize); end > uint64(im.SizeOfImage) {
			// EDK2's loader refuses such an image (PeCoffLoaderLoadImage).
			return nil, formatErr("section %d %q: [%#x, %#x) in memory ends past SizeOfImage %#x", i, s.Name, s.VirtualAddress, end, im.SizeOfImage)
		}
		zeroFill += int64(s.VirtualSize) - int64(s.fileBytes())
		if zeroFill > MaxZeroFill {
			return nil, formatErr("section %d %q: the sections ask for more than %d bytes beyond their file data (VirtualSize %#x, SizeOfRawData %#x)",
				i, s.Name, MaxZeroFill, s.VirtualSize, s.SizeOfRawData)
		}
		if s.SizeOfRawData > 0 {
			end := int64(s.PointerToRawData) + int64(s.SizeOfRawData)
			if end > size {
				return nil, formatErr("section %d %q: file data [%#x, %#x) ends past the end of the file (%d bytes)", i, s.Name, s.PointerToRawData, end, size)
			}
			if s.PointerToRawData < im.SizeOfHeaders {
				return nil, formatErr("section %d %q: file data at %#x overlaps the headers, which end at %#x", i, s.Name, s.PointerToRawData, im.SizeOfHeaders)
			}
		}
		im.Sections = append(im.Sections, s)
	}
	sorted := im.byFileOffset()
	var dataEnd int64 = int64(im.SizeOfHeaders)
	for i, s := range sorted {
		if i > 0 {
			p := sorted[i-1]
			if pEnd := int64(p.PointerToRawData) + int64(p.SizeOfRawData); int64(s.PointerToRawData) < pEnd {
				return nil, formatErr("sections %q [%#x, %#x) and %q [%#x, %#x) overlap in the file", p.Name, p.PointerToRawData, pEnd,
					s.Name, s.PointerToRawData, int64(s.PointerToRawData)+int64(s.SizeOfRawData))
			}
		}
		dataEnd = max(dataEnd, int64(s.PointerToRawData)+int64(s.SizeOfRawData))
	}
	if ct := im.CertTable; ct.Size > 0 {
		off, end := int64(ct.VirtualAddress), int64(ct.VirtualAddress)+int64(ct.Size)
		if end != size {
			return nil, formatErr("the certificate table [%#x, %#x) does not end at the end of the file (%d bytes)", off, end, size)
		}
		if off < dataEnd {
			return nil, formatErr("the certificate table [%#x, %#x) overlaps the headers or section data, which end at %#x", off, end, dataEnd)
		}
	}
	return im, nil
}

func (im *Image) kind() string {
	if im.PE32Plus {
		return "PE32+"
	}
	return "PE32"
}

// read returns n bytes at off, checking them against the file size first.
func (im *Image) read(off, n int64, what string) ([]byte, error) {
	if off < 0 || n < 0 || off > im.size || n > im.size-off {
		return nil, formatErr("%s [%#x, %#x) is past the end of the file (%d bytes): truncated", what, off, off+n, im.size)
	}
	b := make([]byte, n)
	if _, err := im.r.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, formatErr("%s [%#x, %#x): the file ends early: truncated", what, off, off+n)
		}
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return b, nil
}

// byFileOffset returns the sections with file data, ordered by PointerToRawData (ties keep
// the table order), the order Authenticode hashes them in.
func (im *Image) byFileOffset() []*Section {
	var out []*Section
	for i := range im.Sections {
		if im.Sections[i].SizeOfRawData > 0 {
			out = append(out, &im.Sections[i])
		}
	}
	slices.SortStableFunc(out, func(a, b *Section) int { return cmp.Compare(a.PointerToRawData, b.PointerToRawData) })
	return out
}

// hashRange writes the file bytes [off, off+n) to w.
func (im *Image) hashRange(w io.Writer, off, n int64) error {
	if n <= 0 {
		return nil
	}
	got, err := io.Copy(w, io.NewSectionReader(im.r, off, n))
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("read [%#x, %#x): %w", off, off+n, err)
	}
	if got != n {
		return formatErr("bytes [%#x, %#x): the file ends at %#x: truncated", off, off+n, off+got)
	}
	return nil
}

// Authenticode returns the image's Authenticode digest with alg, the PE image hash of the
// Microsoft Authenticode specification ("Calculating the PE Image Hash"):
//
//  1. the headers up to SizeOfHeaders, without the CheckSum field and without the
//     certificate-table data-directory entry (when the optional header has one);
//  2. the file data of every section with SizeOfRawData > 0, in ascending PointerToRawData
//     order;
//  3. when the file is longer than the bytes hashed so far, the data from that offset to the
//     end of the file less the certificate table's size.
//
// padTrailing false is what UEFI firmware measures into PCR 4 (EDK2's
// MeasurePeImageAndExtend / HashPeImage: the trailing data as it is), with SHA-384 what TDX
// firmware extends into RTMR 1 (EDK2's OvmfPkg/Tcg/TdTcg2Dxe/MeasureBootPeCoff.c, the same
// ranges), and what Debian's `pesign -h` prints (SHA-256; pesign 0.112 has no SHA-384).
// padTrailing true zero-pads that trailing data to a multiple of 8 bytes, as `pesign -h -P`
// and `osslsigncode extract-data` do and as signing tools do when they pad the file before
// appending the certificate table. The two differ only when TrailingDataUnaligned. alg is
// any linked-in hash: crypto.SHA384 needs crypto/sha512, which this package imports.
func (im *Image) Authenticode(alg crypto.Hash, padTrailing bool) ([]byte, error) {
	if !alg.Available() {
		return nil, fmt.Errorf("hash %v is not linked in", alg)
	}
	h := alg.New()
	if err := im.writeAuthenticode(h, padTrailing); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// writeAuthenticode writes the bytes the Authenticode digest covers to w, whatever the hash:
// SHA-256 and SHA-384 digests (PCR 4 / TDX RTMR 1) are of the same bytes.
func (im *Image) writeAuthenticode(w io.Writer, padTrailing bool) error {
	hdrEnd := int64(im.SizeOfHeaders)
	if err := im.hashRange(w, 0, im.checksumOff); err != nil {
		return err
	}
	if im.certDirOff >= 0 {
		if err := im.hashRange(w, im.checksumOff+4, im.certDirOff-(im.checksumOff+4)); err != nil {
			return err
		}
		if err := im.hashRange(w, im.certDirOff+8, hdrEnd-(im.certDirOff+8)); err != nil {
			return err
		}
	} else if err := im.hashRange(w, im.checksumOff+4, hdrEnd-(im.checksumOff+4)); err != nil {
		return err
	}
	sum := hdrEnd
	for _, s := range im.byFileOffset() {
		if err := im.hashRange(w, int64(s.PointerToRawData), int64(s.SizeOfRawData)); err != nil {
			return err
		}
		sum += int64(s.SizeOfRawData)
	}
	if n := im.trailingSize(); n > 0 {
		if err := im.hashRange(w, sum, n); err != nil {
			return err
		}
		if pad := (8 - n%8) % 8; padTrailing && pad > 0 {
			if _, err := w.Write(make([]byte, pad)); err != nil {
				return err
			}
		}
	}
	return nil
}

// trailingSize is the length of the trailing data Authenticode hashes after the sections: the
// file size less SizeOfHeaders, the sections' SizeOfRawData and the certificate table.
// Parse guarantees it is not negative.
func (im *Image) trailingSize() int64 {
	sum := int64(im.SizeOfHeaders)
	for _, s := range im.Sections {
		sum += int64(s.SizeOfRawData)
	}
	return im.size - int64(im.CertTable.Size) - sum
}

// TrailingDataUnaligned tells whether the data after the sections (certificate table
// excluded) is not a multiple of 8 bytes, the case where the padded and unpadded Authenticode
// digests differ.
func (im *Image) TrailingDataUnaligned() bool { return im.trailingSize()%8 != 0 }

// Lookup returns the sections whose 8-byte name is exactly name, in table order.
func (im *Image) Lookup(name string) []*Section {
	var out []*Section
	for i := range im.Sections {
		if im.Sections[i].Name == name {
			out = append(out, &im.Sections[i])
		}
	}
	return out
}

// SectionReader returns the section as the firmware loads it into memory, the bytes
// systemd-stub measures: VirtualSize bytes, the first min(VirtualSize, SizeOfRawData) from the
// file and zeros after them.
func (im *Image) SectionReader(s *Section) *io.SectionReader {
	return io.NewSectionReader(&loadedSection{im: im, s: *s}, 0, int64(s.VirtualSize))
}

// loadedSection is an io.ReaderAt over a section's in-memory image.
type loadedSection struct {
	im *Image
	s  Section
}

func (l *loadedSection) ReadAt(p []byte, off int64) (int, error) {
	size := int64(l.s.VirtualSize)
	if off >= size {
		return 0, io.EOF
	}
	want := p[:min(int64(len(p)), size-off)]
	n := 0
	if fb := int64(l.s.fileBytes()); off < fb {
		part := want[:min(int64(len(want)), fb-off)]
		m, err := l.im.r.ReadAt(part, int64(l.s.PointerToRawData)+off)
		n += m
		if m < len(part) {
			if err == nil || errors.Is(err, io.EOF) {
				err = formatErr("section %q: the file ends at %#x: truncated", l.s.Name, int64(l.s.PointerToRawData)+off+int64(m))
			}
			return n, err
		}
	}
	clear(want[n:])
	n = len(want)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// SectionImage parses the section as a PE image of its own, as it lies in memory
// (SectionReader's bytes): the kernel in .linux, which newer stubs start through the
// firmware's LoadImage, so that the firmware measures it into PCR 4 too.
func (im *Image) SectionImage(s *Section) (*Image, error) {
	sub, err := Parse(&loadedSection{im: im, s: *s}, int64(s.VirtualSize))
	if err != nil {
		return nil, fmt.Errorf("section %s: %w", s.Name, err)
	}
	return sub, nil
}
