"""Care of a home folder: checking every file (`vsm-pool doctor`: doctor.py), a hot backup and a
restore into a new home (`vsm-pool backup`, `vsm-pool restore`: backup.py). Issue 25."""
