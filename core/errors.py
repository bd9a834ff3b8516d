"""Errors raised by the pure core. They subclass ValueError so callers map them to 'bad input'."""


class CoreError(ValueError):
    """Inputs the algorithm cannot work with (shapes that disagree, k > n, a secret key missing...)."""


class UnsupportedOperation(CoreError):
    """An operation that cannot be done correctly under the chosen scheme (e.g. Manhattan under CKKS)."""
