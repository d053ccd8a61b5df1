"""Errors that the command line reports as one line (no traceback) with a non-zero exit."""


class KDBenchError(Exception):
    """A user-facing error: its message names what was wrong and how to fix it."""


class ConfigError(KDBenchError):
    """A malformed experiment file, --set, --grid or an unknown name."""


class PluginError(KDBenchError):
    """A plugin that could not be loaded or registered."""


class DatasetMissing(KDBenchError):
    """A dataset that is neither on disk nor downloadable; the message says how to get it."""


class CheckpointError(KDBenchError):
    """A checkpoint or cached teacher that is corrupt, truncated or does not match."""


class NonFiniteLoss(KDBenchError):
    """A loss became NaN or infinite; the cell fails, the grid goes on."""


def did_you_mean(name, choices, what):
    """One-line message for an unknown ``name`` among ``choices``, suggesting the close ones."""
    choices = sorted(choices)
    listing = ", ".join(choices) if choices else "(none registered)"
    return f"unknown {what} {name!r}{close_hint(name, choices)}; valid: {listing}"


def close_hint(name, choices, prefix=""):
    """`` (did you mean 'x'?)`` naming the ``choices`` close to ``name`` (each shown after
    ``prefix``, e.g. ``train.``), or "" when none is."""
    import difflib

    close = difflib.get_close_matches(name, sorted(choices), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(prefix + c) for c in close)}?)" if close else ""
