package luks2

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/secret"
)

// TestPBKDF2LeavesNoKeyCopy computes a volume key's digest, as Format does,
// in a fresh process, wipes the key and then reads every readable mapping of
// the process (heap, stacks, data) for the key, the HMAC key (its SHA-256
// for keys longer than a block) and either XOR a pad: none may be left. The
// key sizes are the storage layouts' (aead, none, hmac(sha256)).
func TestPBKDF2LeavesNoKeyCopy(t *testing.T) {
	if n := os.Getenv("CVMBOOT_PBKDF2_SCAN"); n != "" {
		scanChild(n)
		return
	}
	for _, n := range []int{32, 64, 96} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestPBKDF2LeavesNoKeyCopy$", "-test.count=1")
			cmd.Env = append(os.Environ(), "CVMBOOT_PBKDF2_SCAN="+strconv.Itoa(n))
			out, err := cmd.CombinedOutput()
			if strings.Contains(string(out), "SKIP:") {
				t.Skip(string(out))
			}
			if err != nil || !strings.Contains(string(out), "clean:") {
				t.Fatalf("%v\n%s", err, out)
			}
			t.Log(strings.TrimSpace(string(out)))
		})
	}
}

// mask hides a pattern from the scan: the test keeps pattern XOR mask only.
const mask = 0xa5

type pattern struct {
	name   string
	masked []byte
}

func scanChild(arg string) {
	n, _ := strconv.Atoi(arg)
	key, err := secret.New(n)
	if err != nil {
		fmt.Println("SKIP:", err)
		os.Exit(0)
	}
	if _, err := unix.Getrandom(key.Bytes(), 0); err != nil {
		fmt.Println("getrandom:", err)
		os.Exit(1)
	}
	var pats []pattern
	add := func(name string, src []byte, x byte) {
		m := make([]byte, len(src))
		for i := range src {
			m[i] = src[i] ^ x ^ mask
		}
		pats = append(pats, pattern{name, m})
	}
	k := key.Bytes()
	add("volume key", k, 0)
	hmacKey := k
	if n > sha256.BlockSize {
		scratch, err := secret.New(4 * sha256.BlockSize)
		if err != nil {
			fmt.Println("SKIP:", err)
			os.Exit(0)
		}
		b := scratch.Bytes()
		h := sha256.New()
		if err := hashLongKey(h, h.(interface {
			AppendBinary([]byte) ([]byte, error)
		}), k, b[:sha256.Size], b[sha256.BlockSize:3*sha256.BlockSize]); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		hmacKey = b[:sha256.Size]
		add("volume key tail", k[sha256.BlockSize:], 0)
		add("SHA-256 of the key", hmacKey, 0)
		defer scratch.Wipe()
	}
	add("HMAC key XOR ipad", hmacKey, 0x36)
	add("HMAC key XOR opad", hmacKey, 0x5c)
	salt := make([]byte, 32)
	sum, err := pbkdf2Key(sha256.New, k, salt, 1000, 32)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	clear(sum)
	key.Wipe()
	if n > sha256.BlockSize {
		clear(hmacKey)
	}
	// A canary on the heap proves the scan sees the heap.
	canary := make([]byte, 32)
	if _, err := unix.Getrandom(canary, 0); err != nil {
		fmt.Println("getrandom:", err)
		os.Exit(1)
	}
	canaryPat := []pattern{{"canary", make([]byte, 32)}}
	for i := range canary {
		canaryPat[0].masked[i] = canary[i] ^ mask
	}
	if f, _ := scanMemory(canaryPat); len(f) == 0 {
		fmt.Println("the scan did not find the canary on the heap")
		os.Exit(1)
	}
	runtime.KeepAlive(canary)
	found, scanned := scanMemory(pats)
	if len(found) > 0 {
		fmt.Printf("left in memory after the wipe (%d MiB scanned):\n%s\n", scanned>>20, strings.Join(found, "\n"))
		os.Exit(1)
	}
	fmt.Printf("clean: %d-byte key, %d patterns, %d MiB scanned\n", n, len(pats), scanned>>20)
	os.Exit(0)
}

// scanMemory reads /proc/self/mem through every readable private mapping.
func scanMemory(pats []pattern) (found []string, scanned int64) {
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		return []string{err.Error()}, 0
	}
	defer maps.Close()
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		return []string{err.Error()}, 0
	}
	defer mem.Close()
	var regions [][2]uint64
	var names []string
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || f[1][0] != 'r' || (len(f) > 5 && (f[5] == "[vvar]" || f[5] == "[vsyscall]")) {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		a, _ := strconv.ParseUint(lo, 16, 64)
		b, _ := strconv.ParseUint(hi, 16, 64)
		regions = append(regions, [2]uint64{a, b})
		names = append(names, sc.Text())
	}
	buf := make([]byte, 1<<20)
	for i, r := range regions {
		var carry []byte
		for off := r[0]; off < r[1]; off += uint64(len(buf)) {
			chunk := buf[:min(uint64(len(buf)), r[1]-off)]
			m, err := mem.ReadAt(chunk, int64(off))
			if m == 0 || err != nil && m < len(chunk) {
				break
			}
			scanned += int64(m)
			data := append(carry, chunk[:m]...)
			for _, p := range pats {
				if at := indexMasked(data, p.masked); at >= 0 {
					found = append(found, fmt.Sprintf("%s at %#x in %s", p.name, off+uint64(at)-uint64(len(carry)), names[i]))
				}
			}
			carry = append(carry[:0], chunk[max(0, m-256):m]...)
		}
	}
	return found, scanned
}

// indexMasked finds p (kept masked) in data without ever unmasking it.
func indexMasked(data, masked []byte) int {
	first := masked[0] ^ mask
	for at := 0; at+len(masked) <= len(data); at++ {
		j := bytes.IndexByte(data[at:len(data)-len(masked)+1], first)
		if j < 0 {
			return -1
		}
		at += j
		ok := true
		for i := 1; i < len(masked); i++ {
			if data[at+i] != masked[i]^mask {
				ok = false
				break
			}
		}
		if ok {
			return at
		}
	}
	return -1
}

// The AF merge runs each digest-sized block's chain on a goroutine of its own: neither the
// key nor the last chain value (key XOR the last stripe) may stay behind in those goroutines'
// freed stacks or in the hashes.
func TestAFMergeLeavesNoKeyCopy(t *testing.T) {
	if os.Getenv("CVMBOOT_AF_SCAN") != "" {
		afScanChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAFMergeLeavesNoKeyCopy$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CVMBOOT_AF_SCAN=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "clean:") {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
}

func afScanChild() {
	const n, stripes = 96, 4000 // the persistent root's key under SHA-512: two chains
	key := make([]byte, n)
	src := make([]byte, n*stripes)
	random := func(b []byte) error { _, err := unix.Getrandom(b, 0); return err }
	if err := random(key); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	if err := afSplit(sha512.New, key, stripes, src, random); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	last := make([]byte, n)
	xorInto(last, key, src[(stripes-1)*n:])
	var pats []pattern
	for _, p := range []struct {
		name string
		b    []byte
	}{{"key block 0", key[:64]}, {"key block 1", key[64:]}, {"last chain value, block 0", last[:64]}, {"last chain value, block 1", last[64:]}} {
		m := make([]byte, len(p.b))
		for i := range p.b {
			m[i] = p.b[i] ^ mask
		}
		pats = append(pats, pattern{p.name, m})
	}
	clear(key)
	clear(last)
	dst := make([]byte, n)
	for range 3 {
		afMerge(sha512.New, src, stripes, dst)
	}
	clear(dst)
	clear(src)
	found, scanned := scanMemory(pats)
	if len(found) > 0 {
		fmt.Printf("left in memory after the merge (%d MiB scanned):\n%s\n", scanned>>20, strings.Join(found, "\n"))
		os.Exit(1)
	}
	fmt.Printf("clean: %d patterns, %d MiB scanned\n", len(pats), scanned>>20)
}
