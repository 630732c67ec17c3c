"""Configuration: typed models, TOML loading, quick-mode flags, units."""
