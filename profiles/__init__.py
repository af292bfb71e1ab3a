"""The built-in profiles and language presets: data only (TOML). Installed as the package
``sandbox.profiles`` and found as that package's directory, in a checkout or a wheel alike."""
