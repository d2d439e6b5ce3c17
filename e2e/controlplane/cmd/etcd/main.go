// Command etcd links etcd's own main from the server module, pinned in the same
// go.mod as kube-apiserver so the etcd client and server versions agree.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
