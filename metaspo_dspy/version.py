"""The package version (a leaf module: the run directory records it without importing the package root)."""

__version__ = "0.1.0"


def version_text() -> str:
    """``metaspo-dspy <version>``: what ``metaspo --version`` prints and a run directory records."""
    return f"metaspo-dspy {__version__}"
