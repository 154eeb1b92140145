"""The shared engine of the suite (see README.md)."""
import warnings

# Paddle's import warns on every start that ccache (a compiler cache for custom C++ ops, unused here) is missing
warnings.filterwarnings("ignore", message="No ccache found")

# The user's OMP_NUM_THREADS as it was before anything imported Paddle, whose import sets it to 1 when absent (and
# the engine would then take that for the user's choice): read here, as `common` is imported before Paddle by every
# entry point. None when unset.
import os as _os

USER_OMP_NUM_THREADS = _os.environ.get("OMP_NUM_THREADS")
