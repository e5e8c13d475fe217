package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/alexring/alexring/configs"
)

// Version is the module version the binary was built from ("(devel)" from a
// checkout).
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v += " " + s.Value[:min(12, len(s.Value))]
			}
		}
		return v
	}
	return "unknown"
}

// EnvName is the environment variable that can set a flag: ALEXRING_ and the
// flag's name in capitals, dashes as underscores (--wait-timeout:
// ALEXRING_WAIT_TIMEOUT).
func EnvName(flagName string) string {
	return "ALEXRING_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args into fs, then sets every flag not given on the command line
// from its environment variable, if set: the command line wins over the
// environment, which wins over the default. It adds --version. done is true
// when the command should exit with code (help, version, or a bad flag).
func Parse(fs *flag.FlagSet, args []string) (done bool, code int) {
	_, done, code = ParseGiven(fs, args)
	return done, code
}

// ParseGiven is Parse that also says where each flag that was set came from:
// given maps its name to "--name" (the command line) or to its environment
// variable's name, for messages that must name what the user wrote.
func ParseGiven(fs *flag.FlagSet, args []string) (given map[string]string, done bool, code int) {
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage of %s (every flag can also come from its environment variable, e.g. %s):\n", fs.Name(), EnvName("log-format"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil, true, 0
		}
		return nil, true, 2
	}
	if *version {
		fmt.Printf("%s %s\n", fs.Name(), Version())
		return nil, true, 0
	}
	given = map[string]string{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = "--" + f.Name })
	var bad error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] != "" || bad != nil {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				bad = fmt.Errorf("%s=%q: %v", EnvName(f.Name), v, err)
			}
			given[f.Name] = EnvName(f.Name)
		}
	})
	if bad != nil {
		fmt.Fprintf(fs.Output(), "%s: %v\n", fs.Name(), bad)
		return nil, true, 2
	}
	return given, false, 0
}

// PrintError writes "command: err" on w, once: the worker and coordinator
// packages already start their errors with the command's name.
func PrintError(w io.Writer, command string, err error) {
	fmt.Fprintf(w, "%s: %s\n", command, strings.TrimPrefix(err.Error(), command+": "))
}

// Exit reports err on w (PrintError) and returns the command's exit code: 0
// for no error, 2 for bad input (configs.ErrBadInput: flags, config, input
// files), 1 for any other failure.
func Exit(w io.Writer, command string, err error) int {
	if err == nil {
		return 0
	}
	PrintError(w, command, err)
	if errors.Is(err, configs.ErrBadInput) {
		return 2
	}
	return 1
}
