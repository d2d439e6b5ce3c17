// Command kube-apiserver is a thin wrapper that links the upstream API server
// command from the k8s.io/kubernetes module. The module cannot be built with
// `go install` because of its staging replace directives; a wrapper module can.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
