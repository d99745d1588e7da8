package daemon

import (
	"fmt"

	"github.com/lbkit/lbkit/config"
)

// startOther starts the listener types wired in their own files.
func startOther(e env, l *config.Listener, pools map[string]*poolState, ls *listenerState) error {
	return fmt.Errorf("daemon: listener %s: type %s is not wired into lbkit serve yet", l.Name, l.Type)
}
