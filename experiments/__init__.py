"""Sacred experiments (``python -m experiments.<name>``); see each module's docstring."""
import warnings

# Sacred 0.8.7 (sacred/dependencies.py) does `import pkg_resources`, which setuptools deprecates with a
# UserWarning on every import. There is no Sacred release without it and the user cannot act on it, so it is
# filtered here, before any experiment module imports Sacred (dng_tgn/tracking.py does the same for itself).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
