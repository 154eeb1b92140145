"""Dynamic MLP (CVPR 2022): fine-grained classification with location and date, on the shared engine."""
