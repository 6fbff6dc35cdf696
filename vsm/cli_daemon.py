"""CLI commands that run or talk to the daemon (filled in by the daemon work)."""
