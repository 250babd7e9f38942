package gpt

import "testing"

func TestGUID(t *testing.T) {
	const s = "0fc63daf-8483-4772-8e79-3d69d8477de4" // Linux filesystem data
	g, err := ParseGUID(s)
	if err != nil {
		t.Fatal(err)
	}
	// On disk the first three fields are little-endian.
	if g[0] != 0xaf || g[3] != 0x0f || g[4] != 0x83 || g[6] != 0x72 || g[8] != 0x8e {
		t.Errorf("on-disk bytes % x", g)
	}
	if got := FormatGUID(g[:]); got != s {
		t.Errorf("FormatGUID = %s", got)
	}
	u, _ := ParseUUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
	if FormatUUID(u[:]) != s {
		t.Errorf("FormatUUID(ParseUUID) = %s", FormatUUID(u[:]))
	}
	for _, bad := range []string{"", "0fc63daf84834772-8e79-3d69d8477de4x", "0fc63daf-8483-4772-8e79-3d69d8477dez"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) accepted", bad)
		}
	}
}
