package agentconfig

import "github.com/flowlens/flowlens/pkg/confutil"

// Duration is the configuration files' one duration type ("5s"; a bare
// number is rejected because its unit would be a guess), shared with the
// aggregator's configuration.
type Duration = confutil.Duration
