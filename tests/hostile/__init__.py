"""The hostile-code suite: a table of attacks, each run through the real worker (or CLI)
and followed by proof that nothing escaped. See case.py for the table's shape."""
