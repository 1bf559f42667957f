"""User-facing errors: one line that says what was wrong and where."""


class R1labError(Exception):
    """An error caused by the user's input (config, data, paths). The CLI prints it as one line."""


class ConfigError(R1labError):
    """A recipe or override names a key that does not exist or gives it a value of the wrong type."""


class DataError(R1labError):
    """A dataset file or row is unusable (missing field, bad JSON, no answer)."""


class ModelError(R1labError):
    """A model path or name cannot be loaded."""


class TrainingDivergedError(R1labError):
    """A training step produced NaN or Inf (loss, gradient norm, entropy, reward...): the run stops
    before a checkpoint of the broken weights is saved."""


class EngineError(R1labError):
    """A rollout engine cannot be used: its optional extra is missing, it cannot run this model, or it
    did not start."""


class WorkerError(R1labError):
    """A worker process of the run died, failed or did not answer within its timeout: the run stops
    with one line naming the worker and what it was asked."""


def one_line(e: BaseException, limit: int = 500) -> str:
    """An exception as one line of text for a user-facing message: its type and message, whitespace
    collapsed, at most `limit` characters."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:limit]
