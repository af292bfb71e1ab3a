raise RuntimeError("failing")
