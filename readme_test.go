package lock_test

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// readmeImports are the packages a README snippet may use, by the name it
// uses them under; a snippet gets the imports whose names it mentions.
var readmeImports = map[string]string{
	"context":       "context",
	"errors":        "errors",
	"http":          "net/http",
	"os":            "os",
	"testing":       "testing",
	"time":          "time",
	"lock":          "github.com/idemlock/lock",
	"conformance":   "github.com/idemlock/lock/conformance",
	"idempotency":   "github.com/idemlock/lock/idempotency",
	"memlock":       "github.com/idemlock/lock/backends/memlock",
	"redislock":     "github.com/idemlock/lock/backends/redislock",
	"etcdlock":      "github.com/idemlock/lock/backends/etcdlock",
	"consullock":    "github.com/idemlock/lock/backends/consullock",
	"memcachedlock": "github.com/idemlock/lock/backends/memcachedlock",
	"redis":         "github.com/redis/go-redis/v9",
	"clientv3":      "go.etcd.io/etcd/client/v3",
	"api":           "github.com/hashicorp/consul/api",
	"memcache":      "github.com/bradfitz/gomemcache/memcache",
	"pglock":        "github.com/idemlock/lock/backends/pglock",
	"pgxpool":       "github.com/jackc/pgx/v5/pgxpool",
	"slog":          "log/slog",
	"observe":       "github.com/idemlock/lock/observe",
	"otellock":      "github.com/idemlock/lock/observers/otellock",
}

// readmePrelude declares what the README's snippets take from the
// reader's own program: their context, functions and values.
const readmePrelude = `package snippets

import (
	"context"
	"net/http"
	"testing"

	"github.com/idemlock/lock"
)

var (
	ctx      context.Context
	locker   lock.Backend // what lock.Open returns
	mux      *http.ServeMux
	checkout http.Handler
	msg      struct{ ID string }
)

type Receipt struct{ ID string }

func sendInvoice(ctx context.Context, id int, token uint64) error        { return nil }
func write(ctx context.Context, token uint64)                            {}
func userFromRequest(r *http.Request) string                             { return "" }
func process(ctx context.Context) (Receipt, error)                       { return Receipt{}, nil }
func newLocker(t *testing.T) lock.Locker                                 { return nil }
`

var goBlock = regexp.MustCompile("(?ms)^```go\n(.*?)^```")

// TestReadmeSnippetsCompile compiles every Go block of README.md, each as
// the body of a function (or as declarations, when it declares functions)
// against the prelude above, in a temporary module of a workspace that
// uses every module of the repository, so that a snippet that stops
// compiling fails here.
func TestReadmeSnippetsCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the README's snippets with the go command")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build the snippets with: %v", err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := goBlock.FindAllSubmatch(readme, -1)
	if len(blocks) == 0 {
		t.Fatal("no ```go block in README.md")
	}
	dir := t.TempDir()
	mod := filepath.Join(dir, "snippets")
	write := func(name, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(mod, "go.mod"), "module snippets\n\ngo 1.26\n")
	write(filepath.Join(mod, "prelude.go"), readmePrelude)
	for i, b := range blocks {
		src, err := snippetFile(i, string(b[1]))
		if err != nil {
			t.Errorf("README snippet %d does not parse: %v\n%s", i+1, err, b[1])
			continue
		}
		write(filepath.Join(mod, fmt.Sprintf("snippet%02d.go", i+1)), src)
	}
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	work := "go " + strings.TrimPrefix(runtime.Version(), "go") + "\n\nuse (\n\t./snippets\n"
	for _, m := range repoModules(t, root) {
		work += "\t" + m + "\n"
	}
	write(filepath.Join(dir, "go.work"), work+")\n")

	cmd := exec.Command(goCmd, "build", "./...")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(dir, "go.work"), "GOFLAGS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README snippets do not compile (snippetNN.go is the NNth ```go block of README.md):\n%s", out)
	}
}

// snippetFile turns README block i into a Go file: declarations as they
// are, statements as the body of a function, with a use of every variable
// they declare (a snippet shows a value, not what is done with it next).
func snippetFile(i int, block string) (string, error) {
	// A snippet's import lines are for the reader; the file gets its own.
	block = regexp.MustCompile(`(?m)^import "[^"]*"\n`).ReplaceAllString(block, "")
	code := regexp.MustCompile(`//.*`).ReplaceAllString(block, "") // names in comments are not uses
	var imports []string
	for name, path := range readmeImports {
		if regexp.MustCompile(`\b` + name + `\.`).MatchString(code) {
			imports = append(imports, fmt.Sprintf("%s %q", name, path))
		}
	}
	head := "package snippets\n\nimport (\n" + strings.Join(imports, "\n") + "\n)\n\n"
	if regexp.MustCompile(`(?m)^func `).MatchString(block) {
		return head + block, nil
	}
	fset := token.NewFileSet()
	wrapped := head + fmt.Sprintf("func snippet%02d() {\n", i+1) + block + "\n}\n"
	f, err := parser.ParseFile(fset, "", wrapped, 0)
	if err != nil {
		return "", err
	}
	var uses bytes.Buffer
	body := f.Decls[len(f.Decls)-1].(*ast.FuncDecl).Body
	for _, st := range body.List {
		if as, ok := st.(*ast.AssignStmt); ok && as.Tok == token.DEFINE {
			for _, l := range as.Lhs {
				if id, ok := l.(*ast.Ident); ok && id.Name != "_" {
					fmt.Fprintf(&uses, "\t_ = %s\n", id.Name)
				}
			}
		}
	}
	return head + fmt.Sprintf("func snippet%02d() {\n", i+1) + block + "\n" + uses.String() + "}\n", nil
}

// repoModules returns the directories of the repository's modules (every
// go.mod but the peer benchmarks'), for the workspace.
func repoModules(t *testing.T, root string) []string {
	var mods []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bench") {
			return filepath.SkipDir
		}
		if d.Name() == "go.mod" {
			mods = append(mods, filepath.Dir(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mods
}
