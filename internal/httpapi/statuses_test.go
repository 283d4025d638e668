package httpapi_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// statusConsts are the net/http status constants our servers may name; a
// name not here fails the test, which then asks for it.
var statusConsts = map[string]int{
	"StatusOK": http.StatusOK, "StatusCreated": http.StatusCreated, "StatusAccepted": http.StatusAccepted,
	"StatusNoContent": http.StatusNoContent, "StatusNotModified": http.StatusNotModified,
	"StatusBadRequest": http.StatusBadRequest, "StatusUnauthorized": http.StatusUnauthorized, "StatusForbidden": http.StatusForbidden,
	"StatusNotFound": http.StatusNotFound, "StatusMethodNotAllowed": http.StatusMethodNotAllowed, "StatusConflict": http.StatusConflict,
	"StatusGone": http.StatusGone, "StatusPreconditionFailed": http.StatusPreconditionFailed,
	"StatusRequestEntityTooLarge": http.StatusRequestEntityTooLarge, "StatusUnsupportedMediaType": http.StatusUnsupportedMediaType,
	"StatusPreconditionRequired": http.StatusPreconditionRequired, "StatusTooManyRequests": http.StatusTooManyRequests,
	"StatusInternalServerError": http.StatusInternalServerError, "StatusBadGateway": http.StatusBadGateway,
	"StatusServiceUnavailable": http.StatusServiceUnavailable, "StatusGatewayTimeout": http.StatusGatewayTimeout,
	"StatusNotImplemented": http.StatusNotImplemented,
}

// Issue 14: 428, 409 revoked, 413 and 405 were not in docs/api.md. The
// statuses and codes are derived from the code, so a new one cannot go
// undocumented: every net/http status a service's packages name must have
// a row in its table, every NewError(status, code, …) a row with both, and
// every error code of the contracts must be in the document.
func TestEveryStatusIsDocumented(t *testing.T) {
	root := filepath.Join("..", "..")
	docBytes, err := os.ReadFile(filepath.Join(root, "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(docBytes)
	codes := map[string]string{} // constant name -> code
	for _, f := range []string{"core/contract/coreapi/codes.go", "proxy/contract/enrollapi/api.go"} {
		for name, c := range stringConsts(t, filepath.Join(root, f)) {
			switch c.typ {
			case "ErrorCode", "coreapi.ErrorCode":
				codes[name] = c.value
			case "RefusalRule":
				codes[name] = "refused_" + c.value // RefusalRule.Code
			}
		}
	}
	if len(codes) < 20 {
		t.Fatalf("found only %d error codes: %v", len(codes), codes)
	}
	for name, code := range codes {
		if !strings.Contains(doc, "`"+code+"`") {
			t.Errorf("error code %s (%s) is not in docs/api.md", code, name)
		}
	}
	for _, svc := range []struct {
		heading, table string
		dirs           []string
	}{
		{"## Core", "### Statuses of core", []string{"core/server", "internal/httpapi"}},
		{"## Proxy", "## Proxy", []string{"proxy/server", "internal/httpapi"}},
	} {
		rows := tableRows(doc, svc.table)
		if len(rows) == 0 {
			t.Fatalf("docs/api.md: no status table under %q", svc.table)
		}
		// The conditional statuses (304, 412) are the service's only if it
		// evaluates preconditions: the proxy has no versioned route.
		own, err := filepath.Glob(filepath.Join(root, svc.dirs[0], "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		uses := false
		for _, path := range own {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			uses = uses || (!strings.HasSuffix(path, "_test.go") && strings.Contains(string(b), "httpapi.Preconditions("))
		}
		skip := map[string]bool{"conditional.go": !uses}
		statuses, pairs := namedStatuses(t, root, svc.dirs, codes, skip)
		for st := range statuses {
			if !hasRow(rows, st, "") {
				t.Errorf("%s: status %d (named in %v) has no row in docs/api.md", svc.heading, st, svc.dirs)
			}
		}
		for p := range pairs {
			if !hasRow(rows, p.status, p.code) {
				t.Errorf("%s: %d %s (NewError in %v) has no row in docs/api.md", svc.heading, p.status, p.code, svc.dirs)
			}
		}
	}
}

type pair struct {
	status int
	code   string
}

type constant struct{ typ, value string }

// stringConsts are a file's typed string constants by name.
func stringConsts(t *testing.T, path string) map[string]constant {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]constant{}
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || vs.Type == nil {
			return true
		}
		typ := ""
		switch x := vs.Type.(type) {
		case *ast.Ident:
			typ = x.Name
		case *ast.SelectorExpr:
			if pkg, ok := x.X.(*ast.Ident); ok {
				typ = pkg.Name + "." + x.Sel.Name
			}
		}
		for i, name := range vs.Names {
			if i < len(vs.Values) {
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if v, err := strconv.Unquote(lit.Value); err == nil {
						out[name.Name] = constant{typ, v}
					}
				}
			}
		}
		return true
	})
	return out
}

// namedStatuses are the statuses the non-test files of dirs name
// (http.StatusX) and the (status, code) pairs of their NewError calls.
func namedStatuses(t *testing.T, root string, dirs []string, codes map[string]string, skip map[string]bool) (map[int]bool, map[pair]bool) {
	t.Helper()
	statuses, pairs := map[int]bool{}, map[pair]bool{}
	status := func(e ast.Expr) (int, bool) {
		sel, ok := e.(*ast.SelectorExpr)
		if !ok {
			return 0, false
		}
		if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "http" || !strings.HasPrefix(sel.Sel.Name, "Status") {
			return 0, false
		}
		n, ok := statusConsts[sel.Sel.Name]
		if !ok {
			t.Errorf("http.%s: add it to statusConsts", sel.Sel.Name)
		}
		return n, ok
	}
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(root, dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: %v", dir, err)
		}
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") || skip[filepath.Base(path)] {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if st, ok := status(asExpr(n)); ok {
					statuses[st] = true
				}
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) < 2 {
					return true
				}
				if fn, ok := call.Fun.(*ast.SelectorExpr); (ok && fn.Sel.Name == "NewError") || isIdent(call.Fun, "NewError") {
					st, ok := status(call.Args[0])
					sel, isSel := call.Args[1].(*ast.SelectorExpr)
					if ok && isSel {
						if code, known := codes[sel.Sel.Name]; known {
							pairs[pair{st, code}] = true
						}
					}
				}
				return true
			})
		}
	}
	return statuses, pairs
}

func asExpr(n ast.Node) ast.Expr {
	e, _ := n.(ast.Expr)
	return e
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// tableRows are the "| status | code | when |" rows of the first table
// after heading.
func tableRows(doc, heading string) [][]string {
	i := strings.Index(doc, "\n"+heading)
	if i < 0 {
		return nil
	}
	var rows [][]string
	in := false
	for _, line := range strings.Split(doc[i+1:], "\n")[1:] {
		if strings.HasPrefix(line, "## ") {
			break
		}
		if !strings.HasPrefix(line, "|") {
			if in {
				break
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		if len(cells) == 3 && cells[0] == "status" {
			in = true
			continue
		}
		if in {
			rows = append(rows, cells)
		}
	}
	return rows
}

// hasRow says whether a row has the status and, if code is not empty, the
// code.
func hasRow(rows [][]string, status int, code string) bool {
	for _, r := range rows {
		if len(r) >= 2 && r[0] == strconv.Itoa(status) && (code == "" || r[1] == "`"+code+"`") {
			return true
		}
	}
	return false
}
