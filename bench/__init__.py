"""Speed and memory benchmark of the suite against the PyTorch references: `python -m bench [--quick]`."""
