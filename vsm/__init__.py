"""vsm-pool: the plugin system of venus-sector-manager, with a worker pool per plugin."""

__version__ = "0.1.0"
