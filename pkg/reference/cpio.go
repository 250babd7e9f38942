package reference

import "fmt"

// stubCpio is the cpio archive systemd-stub makes of one UKI section to pass it to the
// kernel as an initrd (pack_cpio_literal in src/boot/cpio.c of 257.13): newc records for the
// directory dir (inode 1, mode 0555) and dir/name (inode 2, mode 0444) holding data, then the
// trailer; uid, gid, mtime and devices zero, each record padded to 4 bytes.
func stubCpio(dir, name string, data []byte) []byte {
	record := func(b []byte, inode, mode uint32, path string, body []byte) []byte {
		b = append(b, "070701"...)
		for _, v := range []uint32{inode, mode, 0, 0, 1, 0, uint32(len(body)), 0, 0, 0, 0, uint32(len(path) + 1), 0} {
			b = fmt.Appendf(b, "%08x", v)
		}
		b = pad4(append(append(b, path...), 0))
		return pad4(append(b, body...))
	}
	b := record(nil, 1, 0o040555, dir, nil)
	b = record(b, 2, 0o100444, dir+"/"+name, data)
	// The stub's trailer spells its name length in upper case.
	b = append(b, "070701"+"00000000"+"00000000"+"00000000"+"00000000"+"00000001"+"00000000"+"00000000"+
		"00000000"+"00000000"+"00000000"+"00000000"+"0000000B"+"00000000"+"TRAILER!!!\x00\x00\x00\x00"...)
	return b
}

// pad4 appends NULs up to a multiple of 4 bytes.
func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
