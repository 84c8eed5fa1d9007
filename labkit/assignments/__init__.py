"""Course assignments: the instant check students run on their own strategy files
(check.py, with one torchrun rank per process running check_worker.py)."""
