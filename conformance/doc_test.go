package conformance

import (
	"go/parser"
	"go/token"
	"regexp"
	"strings"
	"testing"
)

// TestDocListsEveryClause keeps the package doc's lists of clauses in step
// with the suites: every clause, by name, in the order it runs.
func TestDocListsEveryClause(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "doc.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	doc := f.Doc.Text()
	section := func(heading string) []string {
		_, rest, ok := strings.Cut(doc, "# "+heading+"\n")
		if !ok {
			t.Fatalf("the package doc has no section %q", heading)
		}
		rest, _, _ = strings.Cut(rest, "\n# ")
		var names []string
		for _, m := range regexp.MustCompile(`(?m)^  - ([A-Za-z]+)[ :,]`).FindAllStringSubmatch(rest, -1) {
			names = append(names, m[1])
		}
		return names
	}
	leaks := []string{"NoGoroutineLeak", "NoConnectionLeak"}
	var run, store []string
	for _, st := range suite {
		run = append(run, st.name)
	}
	for _, st := range storeSuite {
		store = append(store, st.name)
	}
	for _, tc := range []struct {
		heading string
		want    []string
	}{
		{"The clauses of Run", append(run, leaks...)},
		{"The clauses of RunStore", append(store, leaks[0])}, // "NoGoroutineLeak, NoConnectionLeak: as in Run"
	} {
		if got := section(tc.heading); strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("section %q lists\n%v\nwant\n%v", tc.heading, got, tc.want)
		}
	}
}
