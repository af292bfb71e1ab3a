"""The built-in profiles and language presets: data only (TOML). Installed as the package
``sandbox.profiles`` and read with importlib.resources, from a checkout or a wheel alike."""
