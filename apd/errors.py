"""User-facing errors: the CLI prints them as one line, never as a traceback."""


class ApdError(Exception):
    """Bad input or a failed run, explained in one line that names the field or file."""


class ConfigError(ApdError):
    """A config, sweep file or override is missing, malformed or invalid."""


class Diverged(ApdError):
    """A loss became NaN or infinite; the run ends as diverged at `step`."""

    def __init__(self, step: int, term: str, value: float) -> None:
        super().__init__(f"diverged at step {step}: {term} = {value}")
        self.step, self.term, self.value = step, term, value
