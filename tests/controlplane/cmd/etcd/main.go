// Command etcd is the etcd server binary, built from the go.etcd.io/etcd/server/v3
// module pinned in go.mod (the upstream binary's main package lives in the
// repository's root module, go.etcd.io/etcd/v3, whose dependency set is not
// needed here; its main is just this call).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
