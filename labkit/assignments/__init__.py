"""Course assignments: the instant check students run on their own strategy files
(check.py, with one torchrun rank running check_worker.py), and the primer's helper
that runs a collective live on a few gloo ranks (ranks.py)."""
