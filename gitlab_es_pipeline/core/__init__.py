"""The pure core: no Dagster, no network. Everything here is tested directly."""
