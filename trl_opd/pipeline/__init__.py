"""The staged OPD pipeline and the runs of `trl-opd gkd|minillm|spin`."""
