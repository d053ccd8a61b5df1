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
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    listing = ", ".join(choices) if choices else "(none registered)"
    return f"unknown {what} {name!r}{hint}; valid: {listing}"
