// Package web holds the flowlens UI's browser assets: the sources under
// src/ and the bundle built from them in dist/, which is committed and
// embedded so that `go build` needs no Node.js. `go generate` (reached by
// `make generate`) rebuilds dist/ with the versions package-lock.json pins.
package web

import (
	"embed"
	"io/fs"
)

//go:generate npm ci --no-audit --no-fund
//go:generate npm run build

//go:embed dist
var dist embed.FS

// FS is the built UI rooted at dist/: index.html, app.js and app.css.
func FS() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		// fs.Sub fails only on an invalid path; "dist" is a constant.
		panic(err)
	}
	return sub
}
