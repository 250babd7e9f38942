// Command hookprobe links the storage stage the way cvmboot does, so that
// TestKeyHookOnlyInTestBuilds can inspect which key hook a build contains.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/storage"
)

func main() {
	s := storage.New(config.Default().Storage, nil, func() string { return "" }, "/sysroot")
	if len(os.Args) > 99 { // never: keeps Run and everything it calls linked
		fmt.Println(s.Run(context.Background()))
	}
	fmt.Println("linked")
}
