"""Side-by-side benchmarks: every workload against its peers, measured in one run."""
