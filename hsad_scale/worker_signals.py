"""Imported only in the process that LocalCluster workers fork from (the forkserver, see
:func:`hsad_scale.cluster.start_worker_server`): workers ignore SIGINT. A Ctrl-C in a terminal
reaches every process of the command; the command itself stops its cluster and removes its
temporary output, while workers that took the signal would each print a traceback."""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
