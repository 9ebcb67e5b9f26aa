package testenv

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The top level shows the design (docs/architecture.md): every package
// lives under one of these directories.
var topLevel = []string{"authority", "bench", "cmd", "config", "ha", "internal", "plugins", "provisioners", "test"}

func TestTopLevelLayout(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, pkg := range strings.Fields(string(out)) {
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, ModulePath), "/")
		seen[strings.SplitN(rel, "/", 2)[0]] = true
	}
	var extra []string
	for dir := range seen {
		if !slices.Contains(topLevel, dir) {
			extra = append(extra, dir)
		}
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Fatalf("packages outside the documented top level: %v (move them under internal/ or update docs/architecture.md and this list)", extra)
	}
}

// reflectAllowed lists the files outside internal/ that may import reflect,
// with the reason. None may reach into a dependency: that belongs in
// internal/storage (nosql, bbolt) or internal/provfields (provisioners).
var reflectAllowed = map[string]string{
	"config/strict.go": "strict JSON decoding of stepfort's own configuration types, naming the JSON path of an unknown key",
}

func TestNoReflectionOutsideInternal(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "internal" || strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p != "reflect" && p != "unsafe" {
				continue
			}
			if _, ok := reflectAllowed[filepath.ToSlash(rel)]; ok && p == "reflect" {
				continue
			}
			t.Errorf("%s imports %s: only internal/ may (see docs/architecture.md)", rel, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
