package cli

import "fmt"

// JobFlags are the worker's flags whose settings belong to the job: a joined
// worker takes them from the coordinator's plan, so given to it (on the
// command line or in the environment) they are refused, and coordinator
// --local keeps their environment variables from the workers it starts (it
// has applied them to the job already).
var JobFlags = []string{"epochs", "batch", "lr", "variant", "seed", "dropout", "augment", "resume", "out", "init", "freeze", "save-format", "normalize"}

// JobFlagError is the refusal of job flag name given to a joined worker from
// source (the flag itself or its environment variable): it says who owns the
// setting and how to set it there.
func JobFlagError(name, source string) error {
	what := "--" + name
	if source != what {
		what += " (from " + source + ")"
	}
	var how string
	switch name {
	case "dropout", "augment":
		how = fmt.Sprintf("%s: in the coordinator's --config file", name)
	case "resume":
		how = "coordinator --resume continues the job in its --out"
	default:
		how = fmt.Sprintf("coordinator --%s, or %s: in its --config file", name, yamlKey(name))
	}
	return fmt.Errorf("%s is the job's setting, which the coordinator owns: set it on the coordinator (%s); a joined worker takes the coordinator's", what, how)
}

// yamlKey is the job file's key of a job flag.
func yamlKey(name string) string {
	if name == "save-format" {
		return "save_format"
	}
	return name
}
