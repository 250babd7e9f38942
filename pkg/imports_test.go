// Package pkg_test guards the rule that makes pkg/ importable: what image builders and
// verifiers import never imports the module's internal/ packages (Go would refuse them
// outside this module). Test files may: they drive the real writers to make evidence.
package pkg_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const internalPrefix = "github.com/cvmboot/cvmboot/internal"

func TestPkgImportsNoInternal(t *testing.T) {
	files := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		files++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p == internalPrefix || strings.HasPrefix(p, internalPrefix+"/") {
				t.Errorf("pkg/%s imports %s", path, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 10 {
		t.Fatalf("read only %d files under pkg/: the walk is broken", files)
	}
}
