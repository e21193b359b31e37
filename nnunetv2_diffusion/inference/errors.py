"""The predictor's one error type: bad input found before any case is predicted."""


class DiffusionPredictorError(ValueError):
    """Bad input found before any case is predicted. The message is one line naming the folder, file or option."""
